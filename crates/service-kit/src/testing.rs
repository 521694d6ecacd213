//! Helpers for tests that start a service binary as a real process: pick a free port, wait
//! for `/health/ready`, send SIGTERM and check that it drains and exits cleanly.

use std::collections::BTreeSet;
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// A service binary running as a child process; killed if dropped while running.
pub struct ServiceProcess {
    child: Child,
    pub addr: String,
}

/// Ports handed out by [`free_addr`]: below Linux's ephemeral range (32768–60999 by default).
const FREE_PORTS: std::ops::Range<u16> = 12_000..32_000;

/// A loopback address with a currently free port, for a server a test starts (and may kill
/// and start again on the same address).
///
/// The port is not one the kernel gives out on its own (`:0` and the local end of every
/// outgoing connection come from the ephemeral range): a port from that range, left free
/// while a killed service restarts, can be taken by any connection another test opens in
/// the meantime, and the restarted service then fails to bind it.
///
/// Nor is it one this process handed out before: the tests of one binary run side by side
/// (`cargo test` runs the binaries one after another), and a port free only because its
/// service was just killed must not go to another test's service, which would take it before
/// the restart does.
pub fn free_addr() -> std::io::Result<String> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let span = u128::from(FREE_PORTS.end - FREE_PORTS.start);
    let mut last = None;
    for _ in 0..64 {
        let port = FREE_PORTS.start + (uuid::Uuid::new_v4().as_u128() % span) as u16;
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
        if !handed_out.insert(port) {
            continue;
        }
        drop(handed_out);
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(listener) => return Ok(listener.local_addr()?.to_string()),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
}

impl ServiceProcess {
    /// Starts `bin` with the given environment, listening on a free port given in `bind_var`.
    pub fn spawn(bin: &str, bind_var: &str, envs: &[(&str, &str)]) -> std::io::Result<Self> {
        let addr = free_addr()?;
        let mut command = Command::new(bin);
        command
            .env(bind_var, &addr)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (name, value) in envs {
            command.env(name, value);
        }
        Ok(Self {
            child: command.spawn()?,
            addr,
        })
    }

    /// Polls `path` until it answers 200; returns the body, or the last failure on timeout.
    pub async fn wait_for(&mut self, path: &str, timeout: Duration) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::from("no answer");
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("process exited early with {status}"));
            }
            match http_get(&self.addr, path).await {
                Ok((200, body)) => return Ok(body),
                Ok((status, body)) => last = format!("{status} {body}"),
                Err(error) => last = error.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self, timeout: Duration) -> std::io::Result<ExitStatus> {
        if let Some(pid) = self.child.id() {
            Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await?;
        }
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .map_err(|_| std::io::Error::other("process did not stop after SIGTERM"))?
    }
}

/// A minimal HTTP/1.0 GET, so tests need no client library: `(status, body)`.
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text}")))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Ok((status, body))
}

/// The start-up contract every service binary keeps: with a database and a broker it becomes
/// ready (both checks pass), serves Prometheus metrics, and on SIGTERM drains and exits 0.
pub async fn check_binary_lifecycle(
    bin: &str,
    bind_var: &str,
    envs: &[(&str, &str)],
) -> Result<(), String> {
    let mut service = ServiceProcess::spawn(bin, bind_var, envs).map_err(|e| e.to_string())?;
    let ready = service
        .wait_for("/health/ready", Duration::from_secs(60))
        .await?;
    for check in ["\"database\":\"ok\"", "\"broker\":\"ok\""] {
        if !ready.contains(check) {
            return Err(format!("/health/ready lacks {check}: {ready}"));
        }
    }
    let live = service
        .wait_for("/health/live", Duration::from_secs(5))
        .await?;
    if !live.contains("ok") {
        return Err(format!("/health/live: {live}"));
    }
    let (status, _) = http_get(&service.addr, "/metrics")
        .await
        .map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("/metrics answered {status}"));
    }
    let exit = service
        .terminate(Duration::from_secs(20))
        .await
        .map_err(|e| e.to_string())?;
    let lookup = |name: &str| envs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    if let (Some(url), Some(prefix)) = (lookup("AMQP_URL"), lookup("AMQP_PREFIX")) {
        delete_system_topology(url, prefix)
            .await
            .map_err(|e| e.to_string())?;
    }
    if !exit.success() {
        return Err(format!("exit after SIGTERM: {exit}"));
    }
    Ok(())
}

/// Removes the queues and exchange a test's services declared under `prefix`, so test runs
/// do not pile up quorum queues on the shared broker.
pub async fn delete_system_topology(url: &str, prefix: &str) -> Result<(), messaging::BusError> {
    delete_system_topology_with(url, prefix, &[]).await
}

/// [`delete_system_topology`] from synchronous code such as a test fixture's `Drop`, on a
/// short-lived runtime of its own thread; a failure is printed, not raised (a test should not
/// fail over its clean-up).
pub fn delete_system_topology_blocking(url: &str, prefix: &str) {
    let (url, prefix) = (url.to_owned(), prefix.to_owned());
    let deleted = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(delete_system_topology(&url, &prefix))
    })
    .join();
    if let Ok(Err(error)) = deleted {
        eprintln!("could not delete the test's RabbitMQ topology: {error}");
    }
}

/// [`delete_system_topology`] for services that ran with retry delays of their own
/// (`WORKER_RETRY_DELAYS_MS`, …): their delay queues are named after the delays, so those go
/// too.
pub async fn delete_system_topology_with(
    url: &str,
    prefix: &str,
    retry: &[messaging::RetryPolicy],
) -> Result<(), messaging::BusError> {
    let bus = messaging::RabbitBus::connect(messaging::RabbitConfig::new(url, prefix)).await?;
    for consumer in messaging::topology::system_consumers() {
        bus.delete_consumer(&consumer).await?;
        for policy in retry {
            bus.delete_consumer(&consumer.clone().with_retry(policy.clone()))
                .await?;
        }
    }
    bus.delete_exchange().await?;
    bus.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_addresses_are_never_handed_out_twice() {
        let mut seen = BTreeSet::new();
        for _ in 0..2_000 {
            let addr = free_addr().unwrap();
            let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
            assert!(FREE_PORTS.contains(&port), "{addr}");
            assert!(seen.insert(port), "{addr} handed out twice");
        }
    }
}
