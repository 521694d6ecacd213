//! How every emulator serves its routes: actix-web on the caller's tokio runtime, no signal
//! handling of its own (the host process decides when to stop), and a quick shutdown. Each
//! connection carries a copy of its socket ([`Connection`]), so a handler can drop it with no
//! answer, and a stop closes every connection still open, as a stopped process would.
//! [`Restartable`] is a server that can go down and come back on the same port (the panels'
//! outages).

use std::any::Any;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use actix_web::dev::{Extensions, ServerHandle};
use actix_web::{App, HttpServer, web};
use tokio::task::JoinHandle;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps stay consistent whatever panicked while one was held.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where to listen: an already bound socket (port 0 in tests), or an address to bind again
/// after a simulated outage.
pub enum Listen {
    Socket(TcpListener),
    Addr(SocketAddr),
}

/// The server's open connections, by a number of their own: each a copy of its socket.
#[derive(Clone, Default)]
struct Live(Arc<Mutex<LiveSockets>>);

#[derive(Default)]
struct LiveSockets {
    next: u64,
    sockets: HashMap<u64, Arc<TcpStream>>,
}

impl Live {
    /// actix's `on_connect`: keeps a copy of the socket in the connection's data and in the
    /// live set; the copy leaves the set when actix drops the connection.
    fn on_connect(&self, connection: &dyn Any, data: &mut Extensions) {
        use std::os::fd::AsFd;
        let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() else {
            return;
        };
        let Ok(fd) = stream.as_fd().try_clone_to_owned() else {
            return;
        };
        let socket = Arc::new(TcpStream::from(fd));
        let mut live = lock(&self.0);
        let id = live.next;
        live.next += 1;
        live.sockets.insert(id, socket.clone());
        data.insert(Connection {
            socket,
            id,
            live: self.clone(),
        });
    }

    fn close_all(&self) {
        for socket in lock(&self.0).sockets.values() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A copy of a connection's socket, kept in the connection's data
/// (`HttpRequest::conn_data`), so a handler can drop the connection without answering.
pub struct Connection {
    socket: Arc<TcpStream>,
    id: u64,
    live: Live,
}

impl Connection {
    /// Closes the connection both ways: the client reads end-of-stream and no HTTP answer.
    pub fn drop_connection(&self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        lock(&self.live.0).sockets.remove(&self.id);
    }
}

/// A started server: its handle, the task that ends when it has stopped, and its open
/// connections.
pub struct Running {
    pub handle: ServerHandle,
    pub task: JoinHandle<()>,
    live: Live,
}

impl Running {
    /// Stops the server and closes every connection it still has. actix's stop returns once
    /// the workers are told to stop; a kept-alive connection can still answer a request until
    /// its worker thread has gone, so a client could reach a server that is "down". A stopped
    /// process closes its sockets at once; so does this.
    pub async fn stop(self) {
        self.handle.stop(false).await;
        // The server task ends with the server; its result was logged there.
        let _ = self.task.await;
        self.live.close_all();
    }

    /// For `Drop`: sends the stop and ends the task without waiting.
    pub fn abort(self) {
        // `stop` sends its command at once; the returned future only waits for completion.
        drop(self.handle.stop(false));
        self.task.abort();
        self.live.close_all();
    }
}

/// Starts serving `configure`'s routes.
pub fn serve<F>(
    name: &'static str,
    listen: Listen,
    workers: usize,
    configure: F,
) -> std::io::Result<Running>
where
    F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
{
    let live = Live::default();
    let connections = live.clone();
    let server = HttpServer::new(move || App::new().configure(configure.clone()))
        .on_connect(move |connection, data| connections.on_connect(connection, data))
        .workers(workers.max(1))
        .disable_signals()
        .shutdown_timeout(1);
    let server = match listen {
        Listen::Socket(listener) => server.listen(listener)?,
        // `bind` sets SO_REUSEADDR, so the port can be taken again although connections
        // closed by the stop are still in TIME_WAIT.
        Listen::Addr(addr) => server.bind(addr)?,
    }
    .run();
    let handle = server.handle();
    let task = tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::error!(%error, emulator = name, "emulator server stopped");
        }
    });
    Ok(Running { handle, task, live })
}

type Start = Box<dyn Fn(Listen) -> std::io::Result<Running> + Send + Sync>;

/// A server that can be disconnected — connections refused, as with a stopped panel — and
/// reconnected on the same address. Dropping it stops the server.
pub struct Restartable {
    /// The address it listens on, and keeps while disconnected.
    pub addr: SocketAddr,
    start: Start,
    server: Mutex<Option<Running>>,
    /// While disconnected: a socket bound to the address but not listening, so connections
    /// are refused and no other listener (another test's emulator on port 0) can take it.
    reserved: Mutex<Option<tokio::net::TcpSocket>>,
}

impl Restartable {
    /// Binds `bind` (port 0: a free port) and starts serving with `start`, which is called
    /// again on each reconnect.
    pub fn spawn(
        bind: SocketAddr,
        start: impl Fn(Listen) -> std::io::Result<Running> + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(bind)?;
        let addr = listener.local_addr()?;
        let running = start(Listen::Socket(listener))?;
        Ok(Self {
            addr,
            start: Box::new(start),
            server: Mutex::new(Some(running)),
            reserved: Mutex::new(None),
        })
    }

    /// Stops listening and closes every open connection; the caller's state is kept.
    /// Returns once a new connection is refused.
    pub async fn disconnect(&self) {
        let running = lock(&self.server).take();
        if let Some(running) = running {
            running.stop().await;
            *lock(&self.reserved) = reserve_when_free(self.addr).await;
        }
    }

    /// Listens again on the same address after [`Restartable::disconnect`].
    pub fn reconnect(&self) -> std::io::Result<()> {
        let mut server = lock(&self.server);
        if server.is_none() {
            drop(lock(&self.reserved).take());
            *server = Some((self.start)(Listen::Addr(self.addr))?);
        }
        Ok(())
    }
}

impl Drop for Restartable {
    fn drop(&mut self) {
        if let Some(running) = lock(&self.server).take() {
            running.abort();
        }
    }
}

/// Binds `addr` without listening, once the stopped server's listener is gone (its accept
/// thread closes it a moment after the stop): until then a connection would be accepted and
/// never answered.
async fn reserve_when_free(addr: SocketAddr) -> Option<tokio::net::TcpSocket> {
    let mut last = None;
    for _ in 0..500 {
        match reserve(addr) {
            Ok(socket) => return Some(socket),
            Err(error) => last = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::warn!(%addr, error = ?last, "the emulator's port is still taken after its stop");
    None
}

/// Binds `addr` without listening: connections to it are refused, and the port stays ours.
fn reserve(addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}
