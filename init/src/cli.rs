//! Command-line interface of `enclaveid-init`: `secrets`, `proxy` and `renew`. Flags first,
//! then environment (`ENCLAVEID_*`), then the documented defaults.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `EnclaveID` init containers: the master secret behind SKR, the derived mesh CA, and the
/// workload's certificate.
#[derive(Debug, Parser)]
#[command(name = "enclaveid-init", version)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The three steps.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make sure the master secret (behind its release policy) and the derived CA certificate
    /// exist in the vault. Idempotent.
    Secrets(SecretsArgs),
    /// Release the master secret, verify the stored CA certificate against the re-derived key,
    /// issue this workload's leaf and write ca.pem, cert.pem and key.pem.
    Proxy(ProxyArgs),
    /// Long-running: re-issue the leaf at 2/3 of its lifetime into the same directory.
    Renew(ProxyArgs),
}

/// Where the vault is and how to reach it.
#[derive(Debug, Args, Clone)]
pub struct VaultArgs {
    /// `akv:https://NAME.vault.azure.net`, or `dir:PATH` for development (confidentiality off).
    #[arg(long, env = "ENCLAVEID_VAULT")]
    pub vault: String,
    /// Name of the AKV key holding the master secret.
    #[arg(long, env = "ENCLAVEID_KEY_NAME", default_value = crate::vault::akv::DEFAULT_KEY_NAME)]
    pub key_name: String,
    /// Name of the AKV secret holding the CA certificate (PEM).
    #[arg(long, env = "ENCLAVEID_CA_SECRET_NAME", default_value = crate::vault::akv::DEFAULT_CA_SECRET_NAME)]
    pub ca_secret_name: String,
    /// How to authenticate to AKV. `auto` picks workload identity if
    /// `AZURE_FEDERATED_TOKEN_FILE` is set, a client secret if `AZURE_CLIENT_SECRET` is set,
    /// and managed identity otherwise.
    #[arg(long, env = "ENCLAVEID_AUTH", value_enum, default_value_t = AuthMode::Auto)]
    pub auth: AuthMode,
    /// DEVELOPMENT ONLY (no TEE): keep the master secret in AKV as an ordinary *secret*
    /// (`--master-secret-name`) instead of an exportable key behind Secure Key Release.
    /// Confidentiality is OFF: anyone with secret-get permission on the vault can read the
    /// master secret and so impersonate every workload of the mesh. `akv:` vaults only; refused
    /// together with any SKR flag (`--maa`, `--evidence`, `--release-policy`, ...).
    #[arg(long, env = "ENCLAVEID_NO_SKR")]
    pub no_skr: bool,
    /// With `--no-skr`: name of the AKV secret holding the master secret (base64 of 32 random
    /// bytes, content type [`crate::vault::akv::plain::CONTENT_TYPE`]).
    #[arg(
        long,
        env = "ENCLAVEID_MASTER_SECRET_NAME",
        default_value = crate::vault::akv::plain::DEFAULT_SECRET_NAME,
        requires = "no_skr"
    )]
    pub master_secret_name: String,
    /// Microsoft Azure Attestation base URL, e.g. `https://sharedeus.eus.attest.azure.net`.
    /// Needed for SKR, and as the release policy's authority.
    #[arg(long, env = "ENCLAVEID_MAA", conflicts_with = "no_skr")]
    pub maa: Option<String>,
    /// Evidence for SKR. `sev-guest`: Kata confidential pods, SNP report with the transfer key
    /// in `report_data`, MAA `attest/SevSnpVm`. `vtpm`: AKS confidential-VM nodes, the transfer
    /// key is a TPM key certified by the vTPM's AK, MAA `attest/AzureGuest` (see `--tcti`,
    /// `--vcek`). `simulated`: development against a test double only.
    #[arg(long, env = "ENCLAVEID_EVIDENCE", conflicts_with = "no_skr")]
    pub evidence: Option<String>,
    /// With `--evidence vtpm`: the tpm2-tss TCTI of the vTPM (`device:/dev/tpmrm0`, or
    /// `swtpm:host=H,port=P` in tests).
    #[arg(long, env = "ENCLAVEID_TCTI", default_value = enclaveid_attest::provider::DEFAULT_TCTI)]
    pub tcti: String,
    /// With `--evidence vtpm`: where the VCEK chain of the HCL report's SNP report comes from:
    /// `thim` (Azure's IMDS endpoint), `thim:URL` or `file:PATH` (PEM of VCEK, ASK, ARK).
    #[arg(long, env = "ENCLAVEID_VCEK", default_value = "thim")]
    pub vcek: String,
    /// With `--evidence vtpm`: the firmware's TCG event log sent to MAA with the quote (a
    /// missing file sends an empty log; mount the node's securityfs file to send it).
    #[arg(long, env = "ENCLAVEID_TCG_LOG", default_value = crate::evidence_vtpm::DEFAULT_TCG_LOG)]
    pub tcg_log: std::path::PathBuf,
    /// Extra PEM trust anchors for the vault's and MAA's TLS and for the release JWS chain
    /// (emulators and test doubles). Production uses the system roots only.
    #[arg(long, env = "ENCLAVEID_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// Talk to an AKV emulator on a loopback name: skips the check that the auth challenge
    /// names the vault's domain.
    #[arg(long, hide = true)]
    pub vault_emulator: bool,
    /// Total time budget for retrying transient vault and MAA failures, e.g. `60s`.
    #[arg(long, env = "ENCLAVEID_RETRY_DEADLINE", default_value = "60s", value_parser = parse_duration)]
    pub retry_deadline: Duration,
}

/// Authentication to AKV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Pick from the environment.
    Auto,
    /// AKS workload identity (`AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`).
    WorkloadIdentity,
    /// Managed identity (IMDS, or `IDENTITY_ENDPOINT`).
    ManagedIdentity,
    /// Service principal (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`).
    ClientSecret,
}

/// `secrets` flags.
#[derive(Debug, Args)]
pub struct SecretsArgs {
    /// The vault.
    #[command(flatten)]
    pub vault: VaultArgs,
    /// Release policy JSON file (AKV format). Otherwise it is built from the flags below.
    #[arg(long, env = "ENCLAVEID_RELEASE_POLICY", conflicts_with_all = ["host_data", "compliance_status", "cvm_policy", "no_skr"])]
    pub release_policy: Option<PathBuf>,
    /// Pod policy hash required as `x-ms-sevsnpvm-hostdata` (64 hex characters).
    #[arg(long, env = "ENCLAVEID_HOST_DATA", conflicts_with = "no_skr")]
    pub host_data: Option<String>,
    /// Build the AKS confidential-VM policy instead (pods on CVM nodes, `--evidence vtpm`):
    /// `x-ms-isolation-tee.x-ms-attestation-type` = `sevsnpvm` and
    /// `x-ms-isolation-tee.x-ms-compliance-status` = `--compliance-status` (default
    /// `azure-compliant-cvm`), authority `--maa`.
    #[arg(long, env = "ENCLAVEID_CVM_POLICY", conflicts_with_all = ["host_data", "no_skr"])]
    pub cvm_policy: bool,
    /// Required `x-ms-compliance-status`, e.g. `azure-compliant-uvm`.
    #[arg(long, env = "ENCLAVEID_COMPLIANCE_STATUS", conflicts_with = "no_skr")]
    pub compliance_status: Option<String>,
    /// Key type to create: `RSA-HSM`, `RSA`, `EC-HSM` or `oct-HSM`.
    #[arg(long, default_value = "RSA-HSM")]
    pub key_type: String,
    /// Key size in bits (RSA default 3072, oct default 256).
    #[arg(long)]
    pub key_size: Option<i32>,
    /// Subject CN of the CA certificate.
    #[arg(long, env = "ENCLAVEID_CA_CN", default_value = enclaveid_pki::issue::DEFAULT_CA_COMMON_NAME)]
    pub ca_cn: String,
    /// Validity of a newly made CA certificate, e.g. `3650d`.
    #[arg(long, default_value = "3650d", value_parser = parse_duration)]
    pub ca_validity: Duration,
}

/// `proxy` and `renew` flags.
#[derive(Debug, Args, Clone)]
pub struct ProxyArgs {
    /// The vault.
    #[command(flatten)]
    pub vault: VaultArgs,
    /// Output directory (a tmpfs), e.g. `/run/enclaveid/tls`.
    #[arg(long, env = "ENCLAVEID_OUT")]
    pub out: PathBuf,
    /// DNS SAN, repeatable.
    #[arg(long = "dns", env = "ENCLAVEID_DNS", value_delimiter = ',')]
    pub dns: Vec<String>,
    /// URI SAN, repeatable: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    #[arg(long = "uri", env = "ENCLAVEID_URI", value_delimiter = ',')]
    pub uri: Vec<String>,
    /// Leaf lifetime, e.g. `24h`.
    #[arg(long, env = "ENCLAVEID_LEAF_VALIDITY", default_value = "24h", value_parser = parse_duration)]
    pub validity: Duration,
    /// Allow an output directory that is not a tmpfs (tests, laptops).
    #[arg(long)]
    pub allow_disk: bool,
}

/// Parses `90s`, `15m`, `24h`, `7d` (or bare seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number followed by s, m, h or d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use s, m, h or d)")),
    };
    if secs == 0 {
        return Err(format!("{s:?}: must be positive"));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
impl Cli {
    fn command_for_tests() {
        use clap::CommandFactory;
        Self::command().debug_assert();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_hours(24));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_mins(2));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn cli_parses() {
        Cli::command_for_tests();
        let cli = Cli::try_parse_from([
            "enclaveid-init",
            "proxy",
            "--vault",
            "dir:/tmp/v",
            "--out",
            "/tmp/o",
            "--dns",
            "a.b,c.d",
            "--uri",
            "spiffe://cluster.local/ns/a/sa/b",
        ])
        .unwrap();
        let Command::Proxy(p) = cli.command else {
            panic!("not proxy")
        };
        assert_eq!(p.dns, vec!["a.b", "c.d"]);
        assert_eq!(p.validity, Duration::from_hours(24));
        assert!(!p.vault.no_skr, "SKR is the default");
    }

    const AKV: &str = "akv:https://dev.vault.azure.net";

    #[test]
    fn no_skr_parses_for_every_command() {
        for argv in [
            vec!["secrets", "--vault", AKV, "--no-skr"],
            vec![
                "proxy", "--vault", AKV, "--no-skr", "--out", "/o", "--dns", "a",
            ],
            vec![
                "renew", "--vault", AKV, "--no-skr", "--out", "/o", "--dns", "a",
            ],
        ] {
            let cli = Cli::try_parse_from(std::iter::once("enclaveid-init").chain(argv.clone()))
                .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            let vault = match cli.command {
                Command::Secrets(a) => a.vault,
                Command::Proxy(a) | Command::Renew(a) => a.vault,
            };
            assert!(vault.no_skr, "{argv:?}");
            assert_eq!(
                vault.master_secret_name,
                crate::vault::akv::plain::DEFAULT_SECRET_NAME
            );
        }
        let cli = Cli::try_parse_from([
            "enclaveid-init",
            "secrets",
            "--vault",
            AKV,
            "--no-skr",
            "--master-secret-name",
            "dev-master",
        ])
        .unwrap();
        let Command::Secrets(a) = cli.command else {
            panic!("not secrets")
        };
        assert_eq!(a.vault.master_secret_name, "dev-master");
    }

    #[test]
    fn no_skr_is_refused_with_every_skr_flag_naming_both() {
        let cases: [(&str, &[&str], &str); 8] = [
            ("secrets", &["--maa", "https://m.attest.azure.net"], "--maa"),
            ("secrets", &["--evidence", "vtpm"], "--evidence"),
            (
                "secrets",
                &["--release-policy", "/p.json"],
                "--release-policy",
            ),
            ("secrets", &["--host-data", "ab"], "--host-data"),
            ("secrets", &["--cvm-policy"], "--cvm-policy"),
            (
                "secrets",
                &["--compliance-status", "x"],
                "--compliance-status",
            ),
            ("proxy", &["--maa", "https://m.attest.azure.net"], "--maa"),
            ("renew", &["--evidence", "sev-guest"], "--evidence"),
        ];
        for (command, extra, flag) in cases {
            let mut argv = vec!["enclaveid-init", command, "--vault", AKV, "--no-skr"];
            if command != "secrets" {
                argv.extend(["--out", "/o", "--dns", "a"]);
            }
            argv.extend(extra);
            let err = Cli::try_parse_from(&argv).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{argv:?}"
            );
            assert_eq!(err.exit_code(), 2, "{argv:?}");
            let text = err.to_string();
            assert!(
                text.contains("--no-skr") && text.contains(flag),
                "{argv:?}: {text}"
            );
        }
    }

    #[test]
    fn master_secret_name_needs_no_skr() {
        let err = Cli::try_parse_from([
            "enclaveid-init",
            "secrets",
            "--vault",
            AKV,
            "--master-secret-name",
            "x",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(err.to_string().contains("--no-skr"), "{err}");
    }
}
