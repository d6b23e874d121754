//! `enclaveid-init`: parse arguments, set up logging, run the command, map errors to exit
//! codes (0 ok, 1 runtime failure, 2 bad usage or configuration).

use std::process::ExitCode;

use clap::Parser as _;
use enclaveid_init::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("enclaveid-init: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(enclaveid_init::commands::run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = enclaveid_init::exit_code(&e);
            tracing::error!(exit_code = code, "{e:#}");
            eprintln!("enclaveid-init: error: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
