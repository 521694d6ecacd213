//! `tracing` set-up: human or JSON lines on stdout, JSON lines in daily-rolled files under
//! `LOG_DIR` (`<service>.log.YYYY-MM-DD`).

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::settings::{CommonSettings, LogFormat};

/// Lines the file writer holds before it drops new ones (its queue is allocated and touched
/// up front: the library's default of 128,000 lines is 4 MiB of every process's memory). The
/// payment log's lines are in `system_logs` as well, so a dropped file line loses nothing.
pub const FILE_BUFFER_LINES: usize = 8 * 1024;

/// Keeps the file writer flushing; drop it last, when the process ends.
#[must_use = "dropping the guard stops the log file writer"]
pub struct TelemetryGuard {
    _file: Option<WorkerGuard>,
}

/// Installs the global subscriber. A second call (several services in one process, or tests)
/// is harmless: the first subscriber stays.
pub fn init(service: &str, settings: &CommonSettings) -> TelemetryGuard {
    let filter = EnvFilter::try_new(&settings.rust_log).unwrap_or_else(|_| EnvFilter::new("info"));
    let (file_layer, guard) = match std::fs::create_dir_all(&settings.log_dir) {
        Ok(()) => {
            let appender =
                tracing_appender::rolling::daily(&settings.log_dir, format!("{service}.log"));
            let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
                .buffered_lines_limit(FILE_BUFFER_LINES)
                .finish(appender);
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(false)
                .with_writer(writer);
            (Some(layer), Some(guard))
        }
        Err(error) => {
            eprintln!(
                "cannot create LOG_DIR {}: {error}; logging to stdout only",
                settings.log_dir
            );
            (None, None)
        }
    };
    let (pretty, json) = match settings.log_format {
        LogFormat::Pretty => (Some(tracing_subscriber::fmt::layer()), None),
        LogFormat::Json => (None, Some(tracing_subscriber::fmt::layer().json())),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(pretty)
        .with(json)
        .with(file_layer)
        .try_init();
    TelemetryGuard { _file: guard }
}
