//! All four services in one process on SQLite and the in-process bus: the embedded default for
//! `make demo` and single-box installs. The same service code as the separate binaries, only
//! wired differently.

use service_kit::settings::Source;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = service_kit::settings::or_exit(standalone::Settings::load(&Source::Environment));
    let _telemetry = service_kit::telemetry::init("standalone", &settings.common);
    standalone::run(settings, service_kit::shutdown::on_signals()).await
}
