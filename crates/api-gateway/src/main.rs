use service_kit::settings::Source;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `api-gateway --migrate-only`: the one-shot migration step of docker-compose.yml and
    // deploy/systemd (reads only the common settings, applies pending migrations, exits).
    if std::env::args().skip(1).any(|arg| arg == "--migrate-only") {
        let common = service_kit::settings::or_exit(service_kit::settings::load_common(
            &Source::Environment,
        ));
        let _telemetry = service_kit::telemetry::init(api_gateway::SERVICE, &common);
        return Ok(service_kit::db::migrate_only(&common).await?);
    }
    let settings =
        service_kit::settings::or_exit(api_gateway::Settings::load(&Source::Environment));
    let _telemetry = service_kit::telemetry::init(api_gateway::SERVICE, &settings.common);
    api_gateway::run(settings, service_kit::shutdown::on_signals()).await
}
