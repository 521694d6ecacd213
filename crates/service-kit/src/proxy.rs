//! A TCP proxy that can be cut: an outage of PostgreSQL or RabbitMQ as one process sees it,
//! without touching the shared servers other processes use. Point a service's `DATABASE_URL`
//! or `AMQP_URL` at [`TcpProxy::addr`]; [`TcpProxy::cut`] drops every open connection and
//! refuses new ones (a server that went away), [`TcpProxy::restore`] lets them through again.
//! For reconnection and fault-injection tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

#[derive(Debug)]
struct State {
    cut: AtomicBool,
    /// Bumped by every cut; connections of an older generation close.
    generation: watch::Sender<u64>,
    refused: AtomicU64,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: impl Into<String>) -> std::io::Result<Self> {
        let upstream = upstream.into();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            cut: AtomicBool::new(false),
            generation: watch::channel(0).0,
            refused: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, upstream, state.clone(), stop.clone()));
        Ok(Self { addr, state, stop })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every open connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        self.state.generation.send_modify(|g| *g += 1);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }

    /// How many connections were refused while cut (a client trying to reconnect).
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// `url` with its `host:port` (after `@`, or after `://` when there is no user part)
    /// replaced by this proxy's address.
    pub fn rewrite_url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let (user, hostpart) = match rest.rsplit_once('@') {
            Some((user, host)) => (format!("{user}@"), host),
            None => (String::new(), rest),
        };
        let tail = hostpart.find(['/', '?']).map_or("", |at| &hostpart[at..]);
        format!("{scheme}://{user}{}{tail}", self.addr)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.state.generation.send_modify(|g| *g += 1);
    }
}

async fn accept(
    listener: TcpListener,
    upstream: String,
    state: Arc<State>,
    stop: CancellationToken,
) {
    loop {
        let (client, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        if state.cut.load(Ordering::SeqCst) {
            state.refused.fetch_add(1, Ordering::SeqCst);
            drop(client);
            continue;
        }
        let upstream = upstream.clone();
        let mut generation = state.generation.subscribe();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(&upstream).await else {
                return;
            };
            let mut client = client;
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = generation.changed() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn round_trip(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(b"ping").await?;
        let mut answer = [0u8; 4];
        stream.read_exact(&mut answer).await?;
        Ok(answer.to_vec())
    }

    #[tokio::test]
    async fn forwards_cuts_and_restores() {
        let proxy = TcpProxy::start(echo_server().await.to_string())
            .await
            .unwrap();
        assert_eq!(round_trip(proxy.addr()).await.unwrap(), b"ping");

        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        open.write_all(b"a").await.unwrap();
        let mut one = [0u8; 1];
        open.read_exact(&mut one).await.unwrap();
        proxy.cut();
        // The open connection is closed, new ones are refused.
        let mut rest = Vec::new();
        assert_eq!(open.read_to_end(&mut rest).await.unwrap_or(0), 0);
        assert!(round_trip(proxy.addr()).await.is_err());
        assert_eq!(proxy.refused(), 1);

        proxy.restore();
        assert_eq!(round_trip(proxy.addr()).await.unwrap(), b"ping");
    }

    #[test]
    fn rewrites_urls() {
        let state = Arc::new(State {
            cut: AtomicBool::new(false),
            generation: watch::channel(0).0,
            refused: AtomicU64::new(0),
        });
        let proxy = TcpProxy {
            addr: "127.0.0.1:4000".parse().unwrap(),
            state,
            stop: CancellationToken::new(),
        };
        assert_eq!(
            proxy.rewrite_url("postgres://postgres@127.0.0.1:5432/acp_1?sslmode=disable"),
            "postgres://postgres@127.0.0.1:4000/acp_1?sslmode=disable"
        );
        assert_eq!(
            proxy.rewrite_url("amqp://guest:guest@localhost:5672/%2f"),
            "amqp://guest:guest@127.0.0.1:4000/%2f"
        );
        assert_eq!(
            proxy.rewrite_url("amqp://localhost:5672"),
            "amqp://127.0.0.1:4000"
        );
    }
}
