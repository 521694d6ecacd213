use service_kit::settings::Source;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = service_kit::settings::or_exit(marzban_sync::Settings::load(&Source::Environment));
    let _telemetry = service_kit::telemetry::init(marzban_sync::SERVICE, &settings.common);
    marzban_sync::run(settings, service_kit::shutdown::on_signals()).await
}
