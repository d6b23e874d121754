//! The `enclaveid-attest` command line: argument definitions, logging set-up and dispatch.
//!
//! Exit codes (DESIGN.md): 0 success; 1 a runtime failure (verification failed, server
//! unreachable, images differ); 2 bad usage or bad configuration.

mod probe;
mod serve;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::policy_hash::PolicyInput;

/// Serve and verify AMD SEV-SNP evidence bound to TLS keys.
#[derive(Debug, Parser)]
#[command(name = "enclaveid-attest", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve `GET /attestation?nonce=HEX` over HTTPS, plus `/metrics` and `/ready`.
    Serve(ServeArgs),
    /// Fetch evidence from a server (or read saved evidence) and verify it.
    Verify(VerifyArgs),
    /// Verify a raw SNP report (binary or hex) against its VCEK and the pinned AMD roots.
    VerifyReport(VerifyReportArgs),
    /// Print the SHA-256 that SNP `host_data` carries for a pod security policy.
    PolicyHash(PolicyHashArgs),
    /// Compare two OCI images (layout directories or archives) file by file.
    VerifyImage(VerifyImageArgs),
    /// GET a loopback admin URL; exit 0 on 2xx (for kubelet exec probes).
    Probe(ProbeArgs),
}

/// `serve` flags; each also reads an `ENCLAVEID_ATTEST_*` variable.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// HTTPS listen address.
    #[arg(long, env = "ENCLAVEID_ATTEST_LISTEN", default_value = crate::server::DEFAULT_LISTEN)]
    pub listen: String,
    /// Admin listen address (`/metrics`, `/ready`, plain HTTP).
    #[arg(long, env = "ENCLAVEID_ATTEST_ADMIN", default_value = crate::server::DEFAULT_ADMIN)]
    pub admin: String,
    /// PEM certificate chain of the TLS key (leaf first).
    #[arg(long, env = "ENCLAVEID_ATTEST_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key.
    #[arg(long, env = "ENCLAVEID_ATTEST_TLS_KEY")]
    pub tls_key: PathBuf,
    /// Evidence provider: vtpm, sev-guest or simulated.
    #[arg(long, env = "ENCLAVEID_ATTEST_PROVIDER")]
    pub provider: String,
    /// vtpm: tpm2-tss TCTI (`device:/dev/tpmrm0`, `swtpm:host=H,port=P`, ...).
    #[arg(long, env = "ENCLAVEID_ATTEST_TCTI", default_value = crate::provider::DEFAULT_TCTI)]
    pub tcti: String,
    /// sev-guest: the device.
    #[arg(long, env = "ENCLAVEID_ATTEST_SEV_GUEST_DEVICE", default_value = crate::provider::DEFAULT_SEV_GUEST_DEVICE)]
    pub sev_guest_device: PathBuf,
    /// sev-guest: the configfs-TSM report directory, preferred to the device when it exists.
    #[arg(long, env = "ENCLAVEID_ATTEST_TSM_REPORT_DIR", default_value = crate::provider::sev_guest::tsm::DEFAULT_TSM_REPORT_DIR)]
    pub tsm_report_dir: PathBuf,
    /// sev-guest: the VMPL to request the report at (0-3).
    #[arg(long, env = "ENCLAVEID_ATTEST_VMPL", default_value_t = 0)]
    pub vmpl: u32,
    /// VCEK source: `auto`, `report`, `thim`, `thim:http://HOST[:PORT]/PATH` or `file:PATH`.
    #[arg(long, env = "ENCLAVEID_ATTEST_VCEK", default_value = "auto")]
    pub vcek: String,
    /// PEM file with the ASK and ARK, used when the VCEK source gives only the VCEK.
    #[arg(long, env = "ENCLAVEID_ATTEST_CERT_CHAIN")]
    pub cert_chain: Option<PathBuf>,
    /// Directory caching fetched VCEK chains across restarts.
    #[arg(long, env = "ENCLAVEID_ATTEST_VCEK_CACHE_DIR")]
    pub vcek_cache_dir: Option<PathBuf>,
    /// Sustained /attestation requests per second (token bucket refill).
    #[arg(long, env = "ENCLAVEID_ATTEST_RATE", default_value_t = 10.0)]
    pub rate: f64,
    /// Token bucket size (requests admitted in a burst).
    #[arg(long, env = "ENCLAVEID_ATTEST_BURST", default_value_t = 20)]
    pub burst: u32,
    /// simulated: put the `policy-hash` of this pod policy file in the reports' `host_data`.
    #[arg(long, env = "ENCLAVEID_ATTEST_SIMULATED_POLICY")]
    pub simulated_policy: Option<PathBuf>,
    /// Deadline for one piece of evidence, in seconds.
    #[arg(long, env = "ENCLAVEID_ATTEST_PROVIDER_TIMEOUT", default_value_t = 30)]
    pub provider_timeout: u64,
}

/// `verify` flags.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// `https://HOST[:PORT]` of an attestation server (omit with --evidence).
    #[arg(required_unless_present = "evidence", conflicts_with = "evidence")]
    pub url: Option<String>,
    /// Verify saved evidence (JSON) instead of fetching it; needs --nonce and --tls-spki-sha256.
    #[arg(long, requires_all = ["nonce", "tls_spki_sha256"])]
    pub evidence: Option<PathBuf>,
    /// With --evidence: the nonce the evidence was fetched with (hex).
    #[arg(long, requires = "evidence")]
    pub nonce: Option<String>,
    /// With --evidence: SHA-256 of the server's TLS SPKI (hex, or the `sha256//BASE64` pin).
    #[arg(long, requires = "evidence")]
    pub tls_spki_sha256: Option<String>,
    /// Policy file (YAML).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Accept evidence from the simulated provider (development only).
    #[arg(long)]
    pub allow_simulated: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Save the fetched evidence JSON to this file.
    #[arg(long, conflicts_with = "evidence")]
    pub save: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

/// `verify-report` flags.
#[derive(Debug, Args)]
pub struct VerifyReportArgs {
    /// The report: 1184 raw bytes or hex text.
    #[arg(long)]
    pub report: PathBuf,
    /// The VCEK (DER or PEM; a PEM bundle may carry the ASK and ARK too).
    #[arg(long)]
    pub vcek: Option<PathBuf>,
    /// PEM file with the ASK and ARK (AMD KDS `cert_chain`), if --vcek does not carry them.
    #[arg(long)]
    pub cert_chain: Option<PathBuf>,
    /// Policy file (YAML).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Accept a guest whose policy allows debugging.
    #[arg(long)]
    pub allow_debug: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `policy-hash` flags.
#[derive(Debug, Args)]
pub struct PolicyHashArgs {
    /// The policy: base64 as in the pod annotation, or the decoded Rego text.
    pub file: PathBuf,
    /// How to read the file.
    #[arg(long, value_enum, default_value_t = PolicyInput::Auto)]
    pub input: PolicyInput,
}

/// `verify-image` arguments.
#[derive(Debug, Args)]
pub struct VerifyImageArgs {
    /// The image built from source (OCI layout directory or OCI/docker archive).
    pub expected: PathBuf,
    /// The image to check, e.g. pulled from the registry with skopeo.
    pub actual: PathBuf,
}

/// `probe` flags.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The plain-HTTP URL to GET, e.g. `http://127.0.0.1:15010/metrics` for liveness.
    #[arg(long, default_value = probe::DEFAULT_URL)]
    pub url: String,
    /// Give up after this many milliseconds (keep it below the probe's `timeoutSeconds`).
    #[arg(long, default_value_t = 1_000)]
    pub timeout_ms: u64,
}

/// A failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    /// 1 runtime, 2 usage/config.
    pub code: u8,
    /// What went wrong.
    pub error: anyhow::Error,
}

impl Failure {
    pub(crate) fn usage(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 2,
            error: error.into(),
        }
    }
    pub(crate) fn runtime(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 1,
            error: error.into(),
        }
    }
}

/// Sets up logging on stderr: human-readable, or JSON with `LOG_FORMAT=json`; level from
/// `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Runs a parsed command line. Returns the process exit code.
#[must_use]
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(args) => serve::run(&args),
        Command::Verify(args) => verify::verify(&args),
        Command::VerifyReport(args) => verify::verify_report(&args),
        Command::PolicyHash(args) => policy_hash(&args),
        Command::VerifyImage(args) => verify_image(&args),
        Command::Probe(args) => probe::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("error: {:#}", failure.error);
            ExitCode::from(failure.code)
        }
    }
}

/// The binary's entry point: parse (clap exits 2 on bad usage), log, run.
#[must_use]
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    run(cli)
}

fn policy_hash(args: &PolicyHashArgs) -> Result<ExitCode, Failure> {
    let text = std::fs::read(&args.file)
        .map_err(|e| Failure::usage(anyhow::anyhow!("reading {}: {e}", args.file.display())))?;
    let hash = crate::policy_hash::policy_hash(&text, args.input).map_err(Failure::usage)?;
    println!("{}", hex::encode(hash.sha256));
    eprintln!(
        "(SHA-256 of the {} policy; an SNP report of a pod launched with it has this host_data)",
        if hash.decoded_base64 {
            "base64-decoded"
        } else {
            "raw"
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn verify_image(args: &VerifyImageArgs) -> Result<ExitCode, Failure> {
    for (name, path) in [("EXPECTED", &args.expected), ("ACTUAL", &args.actual)] {
        if !path.exists() {
            return Err(Failure::usage(anyhow::anyhow!(
                "{name}={}: no such file or directory",
                path.display()
            )));
        }
    }
    let comparison = enclaveid_image::compare(&args.expected, &args.actual)
        .map_err(|e| Failure::runtime(anyhow::Error::new(e).context("comparing the images")))?;
    println!("{comparison}");
    Ok(if comparison.is_identical() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
