//! A one-line progress bar on stderr: redrawn in place on a terminal, a line every few
//! seconds otherwise (CI logs).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct Progress {
    label: String,
    started: Instant,
    tty: bool,
}

/// `[#####-----] 50%`.
fn bar(done: u64, total: u64) -> String {
    let width = 24;
    let done = done.min(total);
    let filled = (done * width).checked_div(total).unwrap_or(0) as usize;
    format!(
        "[{}{}] {:>3}%",
        "#".repeat(filled),
        "-".repeat(width as usize - filled),
        (done * 100).checked_div(total).unwrap_or(0)
    )
}

impl Progress {
    pub fn start(label: String) -> Self {
        let tty = std::io::stderr().is_terminal();
        eprintln!("{label} …");
        Self {
            label,
            started: Instant::now(),
            tty,
        }
    }

    fn draw(&self, line: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K  {line}");
        } else {
            let _ = writeln!(err, "  {line}");
        }
        let _ = err.flush();
    }

    /// Redraws the line from `status` until the returned task is aborted.
    pub fn follow_with<F>(&self, status: F) -> JoinHandle<()>
    where
        F: Fn() -> (u64, u64, String) + Send + 'static,
    {
        let this = self.clone();
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let (done, total, text) = status();
                let elapsed = this.started.elapsed().as_secs_f64();
                this.draw(&format!("{} {elapsed:>6.1}s  {text}", bar(done, total)));
            }
        })
    }

    /// Follows one counter (with an optional total).
    pub fn follow(&self, counter: Arc<AtomicU64>, total: Option<u64>) -> JoinHandle<()> {
        let started = self.started;
        self.follow_with(move || {
            let done = counter.load(Ordering::Relaxed);
            let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
            (done, total.unwrap_or(done), format!("{done} ({rate:.0}/s)"))
        })
    }

    pub fn finish(&self, summary: &str) {
        if self.tty {
            eprint!("\r\x1b[2K");
        }
        eprintln!(
            "  {}: {summary} ({:.1}s)",
            self.label,
            self.started.elapsed().as_secs_f64()
        );
    }
}
