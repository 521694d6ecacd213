use service_kit::settings::Source;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings =
        service_kit::settings::or_exit(api_gateway::Settings::load(&Source::Environment));
    let _telemetry = service_kit::telemetry::init(api_gateway::SERVICE, &settings.common);
    api_gateway::run(settings, service_kit::shutdown::on_signals()).await
}
