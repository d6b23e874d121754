//! `enclaveid-proxy`: parse arguments, set up logging, call into the library.
//! Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The EnclaveID mTLS sidecar.
#[derive(Parser, Debug)]
#[command(name = "enclaveid-proxy", version, about)]
struct Cli {
    /// The YAML config file.
    #[arg(long, global = true, env = "ENCLAVEID_PROXY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the sidecar (the default).
    Run,
    /// Validate the config and exit 0 (valid) or 2 (invalid).
    Check,
    /// Start a complete local demo: a dev CA in memory, an outbound and an inbound sidecar and a
    /// tiny app behind them.
    Demo {
        /// First of the ports the demo binds on 127.0.0.1 (app, outbound, inbound, two admins).
        #[arg(long, default_value_t = 15_000)]
        base_port: u16,
    },
    /// GET a loopback admin URL (for exec probes): exit 0 on 2xx, 1 otherwise, 2 on bad usage.
    Probe {
        /// Plain-HTTP URL on loopback.
        #[arg(long, default_value = enclaveid_proxy::admin::DEFAULT_PROBE_URL)]
        url: String,
        /// Deadline for connect, request and answer together, in milliseconds.
        #[arg(long, default_value_t = enclaveid_proxy::admin::DEFAULT_PROBE_TIMEOUT_MS)]
        timeout_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    enclaveid_proxy::telemetry::init();
    let code = match cli.command.unwrap_or(Command::Run) {
        Command::Check => check(cli.config),
        Command::Run => run(cli.config),
        Command::Demo { base_port } => enclaveid_proxy::demo::main(base_port),
        Command::Probe { url, timeout_ms } => probe(&url, timeout_ms),
    };
    ExitCode::from(code)
}

fn probe(url: &str, timeout_ms: u64) -> u8 {
    match enclaveid_proxy::admin::probe(url, std::time::Duration::from_millis(timeout_ms)) {
        Ok(status) => {
            println!("{url}: {status}");
            0
        }
        Err(e) => {
            eprintln!("probe failed: {e}");
            e.exit_code()
        }
    }
}

fn config_path(path: Option<PathBuf>) -> Result<PathBuf, u8> {
    path.ok_or_else(|| {
        eprintln!("error: no config given: pass --config FILE or set ENCLAVEID_PROXY_CONFIG");
        2
    })
}

fn check(path: Option<PathBuf>) -> u8 {
    let path = match config_path(path) {
        Ok(p) => p,
        Err(code) => return code,
    };
    match enclaveid_proxy::config::Config::load(&path) {
        Ok(c) => {
            println!(
                "{}: ok ({} inbound, {} outbound)",
                path.display(),
                c.inbound.len(),
                c.outbound.len()
            );
            0
        }
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            2
        }
    }
}

fn run(path: Option<PathBuf>) -> u8 {
    let path = match config_path(path) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let config = match enclaveid_proxy::config::Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return 2;
        }
    };
    enclaveid_proxy::run_blocking(config)
}
