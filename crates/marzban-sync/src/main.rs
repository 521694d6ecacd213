use marzban_sync::{Command, Settings};
use service_kit::settings::{Source, or_exit};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = match Command::parse(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(usage) => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    if command == Command::Help {
        println!("{}", marzban_sync::USAGE);
        return Ok(());
    }
    let settings = or_exit(Settings::load(&Source::Environment));
    let _telemetry = service_kit::telemetry::init(marzban_sync::SERVICE, &settings.common);
    match command {
        Command::CheckDrift => {
            let report = marzban_sync::check_drift_once(&settings).await?;
            println!(
                "drift check: checked={} repaired={} failed={}",
                report.checked, report.repaired, report.failed
            );
            if report.failed > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        _ => marzban_sync::run(settings, service_kit::shutdown::on_signals()).await,
    }
}
