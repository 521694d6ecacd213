use acpctl::Cli;
use clap::Parser;
use service_kit::settings::Source;

fn main() {
    // A bug is still one line on stderr, never a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let text = info.to_string().replace('\n', " ");
        eprintln!("error: internal error: {text}");
    }));
    // clap prints usage errors itself and exits 2 (0 for --help and --version).
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start: {error}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async {
        match acpctl::run(&cli, &Source::Environment).await {
            Ok(output) => {
                if cli.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&output.json).unwrap_or_default()
                    );
                } else {
                    print!("{}", output.text);
                }
                output.exit_code()
            }
            Err(error) => {
                eprintln!("error: {error}");
                error.exit_code()
            }
        }
    });
    // Background tasks of the database pool or the broker connection are not waited for.
    runtime.shutdown_background();
    std::process::exit(code);
}
