use service_kit::settings::Source;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings =
        service_kit::settings::or_exit(payment_worker::Settings::load(&Source::Environment));
    let _telemetry = service_kit::telemetry::init(payment_worker::SERVICE, &settings.common);
    payment_worker::run(settings, service_kit::shutdown::on_signals()).await
}
