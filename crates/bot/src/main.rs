use service_kit::settings::Source;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = service_kit::settings::or_exit(bot::Settings::load(&Source::Environment));
    let _telemetry = service_kit::telemetry::init(bot::SERVICE, &settings.common);
    bot::run(settings, service_kit::shutdown::on_signals()).await
}
