//! How every emulator serves its routes: actix-web on the caller's tokio runtime, no signal
//! handling of its own (the host process decides when to stop), and a quick shutdown.

use std::net::{SocketAddr, TcpListener};

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};
use tokio::task::JoinHandle;

/// Where to listen: an already bound socket (port 0 in tests), or an address to bind again
/// after a simulated outage.
pub enum Listen {
    Socket(TcpListener),
    Addr(SocketAddr),
}

/// Starts serving `configure`'s routes; returns the handle that stops the server and the task
/// that ends when it has stopped.
pub fn serve<F>(
    name: &'static str,
    listen: Listen,
    workers: usize,
    configure: F,
) -> std::io::Result<(ServerHandle, JoinHandle<()>)>
where
    F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
{
    let server = HttpServer::new(move || App::new().configure(configure.clone()))
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
    Ok((handle, task))
}
