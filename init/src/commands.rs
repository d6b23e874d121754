//! The three commands. Each verifies before it writes: `secrets` refuses a stored CA
//! certificate that does not belong to the master secret, `proxy` and `renew` check the CA
//! certificate against the re-derived key before anything reaches the output directory.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use enclaveid_pki::derive::{derive_ca_key, MasterSecret};
use enclaveid_pki::issue::{self, Ca, CaParams, LeafRequest};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::cli::{AuthMode, Command, ProxyArgs, SecretsArgs, VaultArgs};
use crate::evidence_vtpm::{GuestTpm, VtpmOptions};
use crate::output::{OutputDir, CERT_FILE};
use crate::policy::{PolicyFlags, ReleasePolicy};
use crate::retry::RetryPolicy;
use crate::skr::MaaClient;
use crate::vault::akv::{AkvOptions, AkvVault, GuestSkr, KeySpec, SkrSetup};
use crate::vault::dir::DirVault;
use crate::vault::{Provisioned, Vault, VaultError};
use crate::ConfigError;

/// System trust anchors for the release JWS chain (Debian and distroless layout).
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Runs a parsed command line.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Secrets(args) => secrets(&args).await,
        Command::Proxy(args) => proxy(&args).await,
        Command::Renew(args) => renew(&args).await,
    }
}

/// Either back-end, chosen by `--vault`.
#[derive(Debug)]
pub enum AnyVault {
    /// `dir:PATH`.
    Dir(DirVault),
    /// `akv:URL`.
    Akv(Box<AkvVault>),
}

impl Vault for AnyVault {
    fn describe(&self) -> String {
        match self {
            Self::Dir(v) => v.describe(),
            Self::Akv(v) => v.describe(),
        }
    }
    async fn ensure_master_secret(&self) -> Result<Provisioned, VaultError> {
        match self {
            Self::Dir(v) => v.ensure_master_secret().await,
            Self::Akv(v) => v.ensure_master_secret().await,
        }
    }
    async fn master_secret(&self) -> Result<MasterSecret, VaultError> {
        match self {
            Self::Dir(v) => v.master_secret().await,
            Self::Akv(v) => v.master_secret().await,
        }
    }
    async fn ca_cert(&self) -> Result<Option<String>, VaultError> {
        match self {
            Self::Dir(v) => v.ca_cert().await,
            Self::Akv(v) => v.ca_cert().await,
        }
    }
    async fn put_ca_cert(&self, pem: &str) -> Result<(), VaultError> {
        match self {
            Self::Dir(v) => v.put_ca_cert(pem).await,
            Self::Akv(v) => v.put_ca_cert(pem).await,
        }
    }
}

/// `--no-skr` fails closed: it applies to `akv:` vaults only and is refused together with any
/// flag of secure key release, naming both. clap refuses the same combinations on the command
/// line; this holds for every other way the arguments are built. `secrets` passes its own
/// flags too (the release policy sources).
pub fn check_no_skr(vault: &VaultArgs, secrets: Option<&SecretsArgs>) -> Result<(), ConfigError> {
    if !vault.no_skr {
        return Ok(());
    }
    if !vault.vault.starts_with("akv:") {
        return Err(ConfigError::field(
            "--vault",
            &vault.vault,
            "--no-skr applies to akv: vaults only (a dir: vault has no secure key release to turn off)",
        ));
    }
    let conflict = |flag: &str, value: &str| {
        Err(ConfigError::field(
            flag,
            value,
            &format!(
                "--no-skr (master secret as a plain AKV secret, no secure key release) cannot be used with {flag} (secure key release); drop one of them"
            ),
        ))
    };
    if let Some(maa) = &vault.maa {
        return conflict("--maa", maa);
    }
    if let Some(evidence) = &vault.evidence {
        return conflict("--evidence", evidence);
    }
    if let Some(s) = secrets {
        if let Some(path) = &s.release_policy {
            return conflict("--release-policy", &path.display().to_string());
        }
        if let Some(host_data) = &s.host_data {
            return conflict("--host-data", host_data);
        }
        if s.cvm_policy {
            return conflict("--cvm-policy", "true");
        }
        if let Some(status) = &s.compliance_status {
            return conflict("--compliance-status", status);
        }
    }
    Ok(())
}

/// Opens the vault named by `--vault`; `create` is the key to make if `secrets` finds none.
pub fn open_vault(args: &VaultArgs, create: Option<KeySpec>) -> anyhow::Result<AnyVault> {
    check_no_skr(args, None)?;
    if let Some(path) = args.vault.strip_prefix("dir:") {
        if path.is_empty() {
            return Err(ConfigError::field("--vault", &args.vault, "dir: needs a path").into());
        }
        let vault = DirVault::open(Path::new(path))
            .map_err(|e| ConfigError::field("--vault", &args.vault, &e.to_string()))?;
        return Ok(AnyVault::Dir(vault));
    }
    let Some(url) = args.vault.strip_prefix("akv:") else {
        return Err(ConfigError::field(
            "--vault",
            &args.vault,
            "expected akv:https://NAME.vault.azure.net or dir:PATH",
        )
        .into());
    };
    let extra_roots = match &args.tls_ca_file {
        Some(path) => load_roots(path)?,
        None => Vec::new(),
    };
    let mut guest = None;
    let skr = match (&args.maa, &args.evidence) {
        (Some(maa), Some(evidence)) if evidence == "vtpm" => {
            guest = Some(guest_skr(args, maa, &extra_roots)?);
            None
        }
        (Some(maa), Some(evidence)) => {
            let http = crate::vault::akv::http_client(&extra_roots)
                .context("building the MAA HTTP client")?;
            let mut jws_roots = extra_roots.clone();
            if Path::new(SYSTEM_ROOTS).exists() {
                jws_roots.extend(load_roots(Path::new(SYSTEM_ROOTS))?);
            }
            Some(SkrSetup {
                maa: MaaClient::new(maa, http),
                evidence: crate::evidence::provider(evidence)?,
                jws_roots,
            })
        }
        _ => None,
    };
    let credential = credential(args.auth)?;
    let options = AkvOptions {
        url: url.to_owned(),
        key_name: args.key_name.clone(),
        ca_secret_name: args.ca_secret_name.clone(),
        extra_roots,
        emulator: args.vault_emulator,
        retry: RetryPolicy {
            deadline: args.retry_deadline,
            ..RetryPolicy::default()
        },
    };
    let mut vault = AkvVault::new(options, credential, create, skr)
        .map_err(|e| ConfigError::field("--vault", &args.vault, &e.to_string()))?;
    if let Some(guest) = guest {
        vault = vault.with_guest_skr(guest);
    }
    if args.no_skr {
        vault = vault
            .with_plain_secret(&args.master_secret_name)
            .map_err(|e| {
                ConfigError::field("--no-skr", &args.master_secret_name, &e.to_string())
            })?;
    }
    Ok(AnyVault::Akv(Box::new(vault)))
}

/// `--evidence vtpm`: the vTPM guest flow (MAA `attest/AzureGuest`, transfer key in the TPM).
fn guest_skr(
    args: &VaultArgs,
    maa: &str,
    extra_roots: &[CertificateDer<'static>],
) -> anyhow::Result<GuestSkr> {
    let vcek = args
        .vcek
        .parse()
        .map_err(|e: enclaveid_attest::provider::vcek::VcekError| {
            ConfigError::field("--vcek", &args.vcek, &e.to_string())
        })?;
    let tpm = GuestTpm::new(&VtpmOptions {
        tcti: args.tcti.clone(),
        vcek,
        tcg_log: args.tcg_log.clone(),
    })
    .map_err(|e| ConfigError::field("--tcti", &args.tcti, &e.to_string()))?;
    let http =
        crate::vault::akv::http_client(extra_roots).context("building the MAA HTTP client")?;
    let mut jws_roots = extra_roots.to_vec();
    if Path::new(SYSTEM_ROOTS).exists() {
        jws_roots.extend(load_roots(Path::new(SYSTEM_ROOTS))?);
    }
    Ok(GuestSkr {
        maa: MaaClient::new(maa, http),
        tpm: Arc::new(tpm),
        jws_roots,
    })
}

fn load_roots(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let roots = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| {
            ConfigError::field("--tls-ca-file", &path.display().to_string(), &e.to_string())
        })?;
    if roots.is_empty() {
        return Err(ConfigError::field(
            "--tls-ca-file",
            &path.display().to_string(),
            "no certificates in file",
        )
        .into());
    }
    Ok(roots)
}

fn credential(mode: AuthMode) -> anyhow::Result<Arc<dyn azure_core::credentials::TokenCredential>> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mode = match mode {
        AuthMode::Auto if env("AZURE_FEDERATED_TOKEN_FILE").is_some() => AuthMode::WorkloadIdentity,
        AuthMode::Auto if env("AZURE_CLIENT_SECRET").is_some() => AuthMode::ClientSecret,
        AuthMode::Auto => AuthMode::ManagedIdentity,
        other => other,
    };
    let bad =
        |e: azure_core::Error| ConfigError::field("--auth", &format!("{mode:?}"), &e.to_string());
    Ok(match mode {
        AuthMode::WorkloadIdentity => {
            azure_identity::WorkloadIdentityCredential::new(None).map_err(bad)?
        }
        AuthMode::ClientSecret => {
            let need = |k: &'static str| {
                env(k).ok_or_else(|| {
                    ConfigError::field("--auth", "client-secret", &format!("{k} is not set"))
                })
            };
            azure_identity::ClientSecretCredential::new(
                &need("AZURE_TENANT_ID")?,
                need("AZURE_CLIENT_ID")?,
                need("AZURE_CLIENT_SECRET")?.into(),
                None,
            )
            .map_err(bad)?
        }
        AuthMode::ManagedIdentity | AuthMode::Auto => {
            azure_identity::ManagedIdentityCredential::new(None).map_err(bad)?
        }
    })
}

/// `enclaveid-init secrets`.
pub async fn secrets(args: &SecretsArgs) -> anyhow::Result<()> {
    check_no_skr(&args.vault, Some(args))?;
    // With --no-skr there is no key to create: the master secret is a plain secret.
    let akv = args.vault.vault.starts_with("akv:") && !args.vault.no_skr;
    let create = if akv {
        let policy = match (&args.release_policy, &args.host_data) {
            (Some(path), _) => ReleasePolicy::from_file(path)?,
            (None, None) if args.cvm_policy => {
                let authority = args.vault.maa.as_deref().ok_or_else(|| {
                    ConfigError::field("--maa", "", "required to build the release policy")
                })?;
                ReleasePolicy::for_cvm(authority, args.compliance_status.as_deref())?
            }
            (None, Some(host_data)) => {
                let authority = args.vault.maa.clone().ok_or_else(|| {
                    ConfigError::field("--maa", "", "required to build the release policy")
                })?;
                ReleasePolicy::from_flags(&PolicyFlags {
                    authority,
                    host_data: host_data.clone(),
                    compliance_status: args.compliance_status.clone(),
                })?
            }
            (None, None) => {
                return Err(ConfigError::field(
                    "--release-policy",
                    "",
                    "give a policy file, or --host-data (SNP pods) or --cvm-policy (CVM nodes) and --maa to build one (or, for development without a TEE only, --no-skr)",
                )
                .into())
            }
        };
        Some(KeySpec {
            kty: args.key_type.clone(),
            size: args.key_size,
            policy,
        })
    } else {
        None
    };
    let vault = open_vault(&args.vault, create)?;
    let provisioned = vault
        .ensure_master_secret()
        .await
        .context("making sure the master secret exists")?;
    tracing::info!(vault = %vault.describe(), state = ?provisioned, "master secret");
    let secret = vault
        .master_secret()
        .await
        .context("bringing the master secret into memory")?;
    let key = derive_ca_key(&secret);
    drop(secret);
    let now = OffsetDateTime::now_utc();
    let stored = vault
        .ca_cert()
        .await
        .context("reading the CA certificate")?;
    if let Some(pem) = stored {
        let verified = issue::verify_ca_cert(&key, &pem, now).context(
            "refusing to continue: the stored CA certificate does not belong to the master secret (or is unusable)",
        )?;
        tracing::info!(not_after = %verified.not_after, "CA certificate present and verified; nothing to do");
    } else {
        let mut params = CaParams::new(now);
        params.common_name.clone_from(&args.ca_cn);
        params.not_after = now + args.ca_validity;
        let pem = issue::self_signed_ca(&key, &params).context("making the CA certificate")?;
        vault
            .put_ca_cert(&pem)
            .await
            .context("storing the CA certificate")?;
        tracing::info!(not_after = %params.not_after, "CA certificate created and stored");
    }
    Ok(())
}

/// Checks the SANs: at least one; URIs with the `spiffe` scheme must be valid SPIFFE ids.
fn check_sans(args: &ProxyArgs) -> Result<(), ConfigError> {
    if args.dns.is_empty() && args.uri.is_empty() {
        return Err(ConfigError::field(
            "--dns/--uri",
            "",
            "give at least one SAN",
        ));
    }
    for uri in &args.uri {
        if uri.starts_with("spiffe://") {
            enclaveid_pki::identity::SpiffeId::parse(uri)
                .map_err(|e| ConfigError::field("--uri", uri, &e.to_string()))?;
        } else if !uri.contains("://") {
            return Err(ConfigError::field("--uri", uri, "not a URI"));
        }
    }
    Ok(())
}

/// Everything before the first write: SANs checked, output directory checked, secret released,
/// CA certificate verified against the re-derived key.
async fn prepare(args: &ProxyArgs) -> anyhow::Result<(Ca, OutputDir)> {
    check_sans(args)?;
    let out = OutputDir::new(&args.out, args.allow_disk).map_err(|e| {
        ConfigError::field("--out", &args.out.display().to_string(), &e.to_string())
    })?;
    let vault = open_vault(&args.vault, None)?;
    let secret = vault
        .master_secret()
        .await
        .context("releasing the master secret")?;
    let key = derive_ca_key(&secret);
    drop(secret);
    let pem = vault
        .ca_cert()
        .await
        .context("reading the CA certificate")?
        .ok_or_else(|| VaultError::NotFound {
            vault: vault.describe(),
            what: "CA certificate".into(),
        })?;
    let ca = Ca::new(key, &pem, OffsetDateTime::now_utc())
        .context("the CA certificate from the vault failed verification; nothing was written")?;
    Ok((ca, out))
}

fn issue_and_write(
    ca: &Ca,
    out: &OutputDir,
    args: &ProxyArgs,
) -> anyhow::Result<(OffsetDateTime, OffsetDateTime)> {
    let now = OffsetDateTime::now_utc();
    if now > ca.cert().not_after {
        anyhow::bail!("the CA certificate expired at {}", ca.cert().not_after);
    }
    let mut request = LeafRequest::new(args.dns.clone(), args.uri.clone(), now);
    request.validity = time::Duration::try_from(args.validity).map_err(|e| {
        ConfigError::field(
            "--validity",
            &format!("{:?}", args.validity),
            &e.to_string(),
        )
    })?;
    let leaf = ca
        .issue_leaf(&request)
        .context("issuing the leaf certificate")?;
    out.write(&ca.cert().pem, &leaf)
        .context("writing the TLS files")?;
    tracing::info!(dir = %out.path().display(), not_after = %leaf.not_after, "leaf certificate written");
    Ok((leaf.not_before, leaf.not_after))
}

/// `enclaveid-init proxy`.
pub async fn proxy(args: &ProxyArgs) -> anyhow::Result<()> {
    let (ca, out) = prepare(args).await?;
    issue_and_write(&ca, &out, args)?;
    Ok(())
}

/// How long to wait before re-issuing a leaf valid over `[not_before, not_after]`: until 2/3
/// of its lifetime, and not at all if that moment has passed.
#[must_use]
pub fn renewal_delay(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> Duration {
    let lifetime = not_after - not_before;
    let due = not_before + lifetime * 2 / 3;
    Duration::try_from(due - now).unwrap_or(Duration::ZERO)
}

/// The validity of the certificate already in the output directory, if it is one this CA
/// signed for exactly the requested SANs (a restart with other flags, or another CA, means the
/// file is stale and is replaced at once).
fn existing_validity(
    ca: &Ca,
    out: &OutputDir,
    args: &ProxyArgs,
) -> Option<(OffsetDateTime, OffsetDateTime)> {
    use x509_parser::extensions::GeneralName;
    let pem = std::fs::read(out.path().join(CERT_FILE)).ok()?;
    let (_, parsed) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = parsed.parse_x509().ok()?;
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca.cert().der).ok()?;
    cert.verify_signature(Some(ca_cert.public_key())).ok()?;
    let mut dns = Vec::new();
    let mut uris = Vec::new();
    for name in &cert.subject_alternative_name().ok()??.value.general_names {
        match name {
            GeneralName::DNSName(d) => dns.push((*d).to_owned()),
            GeneralName::URI(u) => uris.push((*u).to_owned()),
            _ => return None,
        }
    }
    let (mut want_dns, mut want_uris) = (args.dns.clone(), args.uri.clone());
    for v in [&mut dns, &mut uris, &mut want_dns, &mut want_uris] {
        v.sort();
    }
    (dns == want_dns && uris == want_uris).then(|| {
        (
            cert.validity().not_before.to_datetime(),
            cert.validity().not_after.to_datetime(),
        )
    })
}

/// `enclaveid-init renew`: runs until SIGTERM/SIGINT.
pub async fn renew(args: &ProxyArgs) -> anyhow::Result<()> {
    let (ca, out) = prepare(args).await?;
    let mut validity = match existing_validity(&ca, &out, args) {
        Some(v) => v,
        None => issue_and_write(&ca, &out, args)?,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    // After a failed renewal (a full tmpfs, a transient write error) the old files stay in
    // place, untouched, and the renewal is retried with backoff rather than giving up: a
    // renewer that exits would leave the proxy serving a leaf that is about to expire.
    let mut retry: Option<Duration> = None;
    loop {
        let delay = retry
            .unwrap_or_else(|| renewal_delay(validity.0, validity.1, OffsetDateTime::now_utc()));
        tracing::info!(in_seconds = delay.as_secs(), "next renewal scheduled");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); return Ok(()); }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: stopping"); return Ok(()); }
        }
        match issue_and_write(&ca, &out, args) {
            Ok(v) => {
                validity = v;
                retry = None;
            }
            Err(e) => {
                let next = next_retry(retry);
                tracing::error!(
                    error = format!("{e:#}"),
                    retry_in_seconds = next.as_secs(),
                    "renewal failed; the previous files are left in place"
                );
                retry = Some(next);
            }
        }
    }
}

/// Backoff between failed renewals: 1 s, doubling, at most 30 s.
fn next_retry(previous: Option<Duration>) -> Duration {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);
    previous.map_or(FIRST, |d| (d * 2).min(MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    type Set = fn(&mut SecretsArgs);

    fn secrets_args(flags: &[&str]) -> SecretsArgs {
        let cli =
            crate::cli::Cli::try_parse_from(["enclaveid-init", "secrets"].iter().chain(flags))
                .unwrap();
        let Command::Secrets(parsed) = cli.command else {
            panic!("not secrets")
        };
        parsed
    }

    #[test]
    fn no_skr_check_names_both_flags_and_fails_closed() {
        let akv = "akv:https://dev.vault.azure.net";
        // Accepted: --no-skr alone on an akv: vault; without --no-skr nothing is checked here.
        check_no_skr(&secrets_args(&["--vault", akv, "--no-skr"]).vault, None).unwrap();
        let plain = secrets_args(&["--vault", akv, "--no-skr"]);
        check_no_skr(&plain.vault, Some(&plain)).unwrap();
        let skr = secrets_args(&["--vault", akv, "--maa", "https://m", "--cvm-policy"]);
        check_no_skr(&skr.vault, Some(&skr)).unwrap();

        // Arguments built some other way than clap (env, a library caller) get the same refusals.
        let cases: [(Set, &str); 6] = [
            (|a| a.vault.maa = Some("https://m".into()), "--maa"),
            (|a| a.vault.evidence = Some("vtpm".into()), "--evidence"),
            (
                |a| a.release_policy = Some("/p.json".into()),
                "--release-policy",
            ),
            (|a| a.host_data = Some("ab".into()), "--host-data"),
            (|a| a.cvm_policy = true, "--cvm-policy"),
            (
                |a| a.compliance_status = Some("x".into()),
                "--compliance-status",
            ),
        ];
        for (set, flag) in cases {
            let mut args = secrets_args(&["--vault", akv, "--no-skr"]);
            set(&mut args);
            let err = check_no_skr(&args.vault, Some(&args)).unwrap_err();
            assert_eq!(err.field, flag);
            assert!(
                err.reason.contains("--no-skr") && err.reason.contains(flag),
                "{err}"
            );
            let err = anyhow::Error::from(err);
            assert_eq!(crate::exit_code(&err), 2, "{err}");
        }

        // A dir: vault has no SKR to turn off.
        let dir = secrets_args(&["--vault", "dir:/tmp/v", "--no-skr"]);
        let err = check_no_skr(&dir.vault, Some(&dir)).unwrap_err();
        assert!(err.reason.contains("akv: vaults only"), "{err}");
    }

    #[tokio::test]
    async fn secrets_refuses_no_skr_with_a_policy_before_any_request() {
        // clap would refuse this command line; built by hand, `secrets` still exits 2 without
        // reaching for the (unresolvable) vault.
        let mut args = secrets_args(&["--vault", "akv:https://nowhere.invalid", "--no-skr"]);
        args.host_data = Some("ab".repeat(32));
        let err = secrets(&args).await.unwrap_err();
        assert_eq!(crate::exit_code(&err), 2, "{err:#}");
        assert!(format!("{err:#}").contains("--host-data"), "{err:#}");
    }

    #[test]
    fn failed_renewals_back_off_up_to_thirty_seconds() {
        let mut d = None;
        let seen: Vec<u64> = (0..8)
            .map(|_| {
                let next = next_retry(d);
                d = Some(next);
                next.as_secs()
            })
            .collect();
        assert_eq!(seen, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn renewal_at_two_thirds() {
        let nb = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        let na = nb + time::Duration::hours(24);
        assert_eq!(renewal_delay(nb, na, nb), Duration::from_hours(16));
        assert_eq!(
            renewal_delay(nb, na, nb + time::Duration::hours(10)),
            Duration::from_hours(6)
        );
        assert_eq!(renewal_delay(nb, na, na), Duration::ZERO);
    }
}
