//! Secure Key Release on an AKS confidential-VM node (`--evidence vtpm`) end to end, against a
//! real software TPM (swtpm, provisioned with an AK and an HCL report as Azure's paravisor
//! does) and the MAA guest-attestation + key-release TEST DOUBLES (`support/guest_double.rs`
//! hooked into `support/double.rs`) over real HTTPS. The official Key Vault client makes the
//! release call; the TPM creates, certifies and uses the transfer key.
//!
//! Happy path: the released secret derives the same CA as the `dir:` and the `sev-guest`
//! (SNP) paths. Refused: an AK that is not the HCL report's `HCLAkPub`, a replayed nonce, a
//! quote over another nonce, tampered PCRs, a key the AK did not certify, a broken quote
//! signature, and a PCR change between attestation and release (the key's PCR policy).

#![allow(clippy::unwrap_used)] // a failed step is a failed test

#[path = "support/guest_double.rs"]
mod guest_double;
mod support;
#[path = "skr_vtpm/swtpm.rs"]
mod swtpm;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use enclaveid_attest::provider::VcekSource;
use enclaveid_attest_verifier::simulated::{ReportFields, SimulatedChain};
use enclaveid_init::evidence::AttestProvider;
use enclaveid_init::evidence_vtpm::{GuestTpm, VtpmOptions};
use enclaveid_init::retry::RetryPolicy;
use enclaveid_init::skr::guest::{attestation_info, request_body};
use enclaveid_init::skr::{MaaClient, SkrError};
use enclaveid_init::vault::akv::{http_client, AkvOptions, AkvVault, GuestSkr, SkrSetup};
use enclaveid_init::vault::dir::DirVault;
use enclaveid_init::vault::{Vault as _, VaultError};
use enclaveid_pki::derive::{derive_ca_key, MasterSecret, VaultKeyType};
use rsa::pkcs8::DecodePublicKey as _;
use rsa::traits::PrivateKeyParts as _;
use support::double::{Double, HeldKey, TestPki};
use support::StaticToken;

use guest_double::GuestMaa;
use swtpm::{require_tool, Swtpm};

/// The simulated AMD chain that signs the HCL report's SNP report (RSA-4096: made once).
fn amd() -> &'static SimulatedChain {
    static CHAIN: OnceLock<SimulatedChain> = OnceLock::new();
    CHAIN.get_or_init(|| SimulatedChain::new().unwrap())
}

fn tools_present() -> bool {
    ["swtpm", "tpm2_createprimary", "tpm2_pcrextend"]
        .iter()
        .all(|tool| require_tool(tool))
}

/// A provisioned swtpm, the VCEK chain file for its HCL report and the CA of its AK certificate.
struct Rig {
    tpm: Swtpm,
    chain_file: PathBuf,
    ak_root: Vec<u8>,
}

/// A test vTPM CA and an AK certificate it issues for `ak` (what Azure provisions in NV
/// 0x01C101D0): returns (CA DER, certificate DER).
fn ak_certificate(ak: &rsa::RsaPublicKey) -> (Vec<u8>, Vec<u8>) {
    use rsa::pkcs8::EncodePublicKey as _;
    let root_key = rcgen::KeyPair::generate().unwrap();
    let mut root_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    root_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Test Virtual TPM CA");
    let root = root_params.self_signed(&root_key).unwrap();
    let issuer = rcgen::Issuer::new(root_params, root_key);
    let spki =
        rcgen::SubjectPublicKeyInfo::from_der(ak.to_public_key_der().unwrap().as_bytes()).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test-cvm AK");
    let cert = params.signed_by(&spki, &issuer).unwrap();
    (root.der().to_vec(), cert.der().to_vec())
}

/// swtpm with an AK at 0x81000003 and an HCL report whose `HCLAkPub` is `hcl_ak` (the AK
/// itself when `None`).
fn rig(hcl_ak: Option<&rsa::RsaPublicKey>) -> Rig {
    let tpm = Swtpm::start();
    let ak_pem = tpm.provision_ak();
    let ak = rsa::RsaPublicKey::from_public_key_pem(&ak_pem).unwrap();
    let claims = enclaveid_attest_verifier::hcl::claims_json(hcl_ak.unwrap_or(&ak));
    let hcl = amd().hcl_report(claims.as_bytes(), &ReportFields::default());
    tpm.provision_hcl(&hcl);
    let (ak_root, ak_cert) = ak_certificate(&ak);
    tpm.provision_ak_cert(&ak_cert);
    let chain_file = tpm.state.path().join("vcek-chain.pem");
    std::fs::write(
        &chain_file,
        format!("{}{}{}", amd().vcek_pem(), amd().ask_pem(), amd().ark_pem()),
    )
    .unwrap();
    Rig {
        tpm,
        chain_file,
        ak_root,
    }
}

impl Rig {
    fn guest_tpm(&self) -> Arc<GuestTpm> {
        Arc::new(
            GuestTpm::new(&VtpmOptions {
                tcti: self.tpm.tcti(),
                vcek: VcekSource::File(self.chain_file.clone()),
                tcg_log: self.tpm.state.path().join("no-event-log"),
            })
            .unwrap(),
        )
    }
}

fn options(double: &Double, pki: &TestPki) -> AkvOptions {
    AkvOptions {
        url: double.base.clone(),
        key_name: "master".into(),
        ca_secret_name: "ca".into(),
        extra_roots: vec![pki.root_der.clone()],
        emulator: true,
        retry: RetryPolicy {
            deadline: Duration::from_secs(20),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
        },
    }
}

fn maa(double: &Double, pki: &TestPki) -> MaaClient {
    MaaClient::new(
        &double.base,
        http_client(std::slice::from_ref(&pki.root_der)).unwrap(),
    )
}

/// An `akv:` vault whose SKR takes the vTPM guest flow.
fn guest_vault(double: &Double, pki: &TestPki, tpm: Arc<GuestTpm>) -> AkvVault {
    AkvVault::new(options(double, pki), Arc::new(StaticToken), None, None)
        .unwrap()
        .with_guest_skr(GuestSkr {
            maa: maa(double, pki),
            tpm,
            jws_roots: vec![pki.root_der.clone()],
        })
}

async fn start_double(held: HeldKey) -> (Arc<TestPki>, Double, GuestMaa) {
    let pki = Arc::new(TestPki::new());
    let guest = GuestMaa::default();
    let double = Double::start_with_hook(pki.clone(), held, Some(guest.hook())).await;
    (pki, double, guest)
}

/// Releases with a bound on the whole exchange, so a hang fails the test instead of stalling it.
async fn release(vault: &AkvVault) -> Result<MasterSecret, VaultError> {
    tokio::time::timeout(Duration::from_mins(2), vault.release_version("v1"))
        .await
        .expect("the release finishes within two minutes")
}

fn rsa_key() -> rsa::RsaPrivateKey {
    rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap()
}

/// The MAA refusal inside a failed release, or a panic naming what came instead.
fn maa_refusal(err: &VaultError) -> &str {
    match err {
        VaultError::Skr(SkrError::MaaRefused {
            status: 400,
            message,
            ..
        }) => message,
        other => panic!("expected MAA to refuse the evidence, got: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vtpm_release_derives_the_same_ca_as_the_dir_and_snp_paths() {
    if !tools_present() {
        return;
    }
    let held = rsa_key();
    let (pki, double, guest) = start_double(HeldKey::Rsa(Box::new(held.clone()))).await;
    let rig = tokio::task::spawn_blocking(|| rig(None)).await.unwrap();
    guest.log.lock().unwrap().ak_root = Some(rig.ak_root.clone());
    let vault = guest_vault(&double, &pki, rig.guest_tpm());
    let released = release(&vault).await.unwrap();

    // The dir: path holds the same master secret as raw bytes.
    let expected =
        MasterSecret::from_vault_key(VaultKeyType::Rsa, &held.d().to_bytes_be()).unwrap();
    assert_eq!(released.expose(), expected.expose());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("master-secret"), expected.expose()).unwrap();
    let from_dir = DirVault::open(dir.path())
        .unwrap()
        .master_secret()
        .await
        .unwrap();
    let ca = derive_ca_key(&released).public_key();
    assert_eq!(ca, derive_ca_key(&from_dir).public_key());

    // The SNP (sev-guest shaped, simulated evidence) path against the same vault double.
    let simulated =
        enclaveid_attest::provider::build(&enclaveid_attest::provider::ProviderConfig::new(
            enclaveid_attest::provider::ProviderKind::Simulated,
        ))
        .unwrap();
    let snp_vault = AkvVault::new(
        options(&double, &pki),
        Arc::new(StaticToken),
        None,
        Some(SkrSetup {
            maa: maa(&double, &pki),
            evidence: Arc::new(AttestProvider::new(simulated)),
            jws_roots: vec![pki.root_der.clone()],
        }),
    )
    .unwrap();
    let via_snp = release(&snp_vault).await.unwrap();
    assert_eq!(ca, derive_ca_key(&via_snp).public_key());

    let seen = double.behaviour.lock().unwrap().seen.clone();
    assert_eq!(
        &seen[..4],
        [
            "POST /attest/AzureGuest",
            "POST /keys/master/v1/release",
            "POST /keys/master/v1/release",
            "GET /certs",
        ]
    );
    assert!(guest.log.lock().unwrap().refusals.is_empty());

    // The same request again: MAA refuses a nonce it has seen.
    let first = guest.log.lock().unwrap().bodies[0].clone();
    let err = maa(&double, &pki)
        .attest_azure_guest(&first)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SkrError::MaaRefused { status: 400, message, .. } if message.contains("replay")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oct_key_is_released_raw() {
    if !tools_present() {
        return;
    }
    let secret: Vec<u8> = (100u8..132).collect();
    let (pki, double, guest) = start_double(HeldKey::Oct(secret.clone())).await;
    let rig = tokio::task::spawn_blocking(|| rig(None)).await.unwrap();
    guest.log.lock().unwrap().ak_root = Some(rig.ak_root.clone());
    let released = release(&guest_vault(&double, &pki, rig.guest_tpm()))
        .await
        .unwrap();
    assert_eq!(released.expose(), secret.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ak_that_is_not_the_hcl_ak_is_refused() {
    if !tools_present() {
        return;
    }
    let (pki, double, guest) = start_double(HeldKey::Oct(vec![1; 32])).await;
    let other = rsa_key().to_public_key();
    let rig = tokio::task::spawn_blocking(move || rig(Some(&other)))
        .await
        .unwrap();
    guest.log.lock().unwrap().ak_root = Some(rig.ak_root.clone());
    let err = release(&guest_vault(&double, &pki, rig.guest_tpm()))
        .await
        .unwrap_err();
    assert!(maa_refusal(&err).contains("HCLAkPub"), "{err}");
    let seen = double.behaviour.lock().unwrap().seen.clone();
    assert!(
        !seen.iter().any(|s| s.contains("release")),
        "no release was attempted: {seen:?}"
    );
    assert_eq!(guest.log.lock().unwrap().refusals.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_never_presented_and_a_fresh_one_is_fetched() {
    if !tools_present() {
        return;
    }
    let (pki, double, guest) = start_double(HeldKey::Oct(vec![3; 32])).await;
    let rig = tokio::task::spawn_blocking(|| rig(None)).await.unwrap();
    guest.log.lock().unwrap().ak_root = Some(rig.ak_root.clone());
    let vault = guest_vault(&double, &pki, rig.guest_tpm());

    // One expired token: the next attempt attests again (new nonce, new key) and succeeds.
    guest.log.lock().unwrap().expired_tokens = 1;
    let released = release(&vault).await.unwrap();
    assert_eq!(released.expose(), &[3; 32]);
    assert_eq!(guest.log.lock().unwrap().nonces.len(), 2);
    assert_eq!(double.behaviour.lock().unwrap().expired_refused, 0);

    // Only expired tokens: bounded by the retry deadline, then an error naming the expiry,
    // and AKV never saw one.
    guest.log.lock().unwrap().expired_tokens = u32::MAX;
    let mut short = options(&double, &pki);
    // Long enough that a first attempt on a loaded machine ends inside it with its error.
    short.retry.deadline = Duration::from_secs(10);
    let vault = AkvVault::new(short, Arc::new(StaticToken), None, None)
        .unwrap()
        .with_guest_skr(GuestSkr {
            maa: maa(&double, &pki),
            tpm: rig.guest_tpm(),
            jws_roots: vec![pki.root_der.clone()],
        });
    let err = release(&vault).await.unwrap_err();
    assert!(matches!(err, VaultError::GaveUp { .. }), "{err}");
    assert!(err.to_string().contains("exp"), "{err}");
    assert_eq!(double.behaviour.lock().unwrap().expired_refused, 0);
}

/// Evidence for `nonce` as the request's JSON, for the wire-level refusals.
fn info_for(tpm: &GuestTpm, nonce: &[u8; 32]) -> serde_json::Value {
    let evidence = tpm.collect(nonce).unwrap();
    attestation_info(
        &evidence,
        nonce,
        &enclaveid_init::skr::guest::OsInfo::detect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_evidence_is_refused_each_for_its_reason() {
    if !tools_present() {
        return;
    }
    let (pki, double, guest) = start_double(HeldKey::Oct(vec![1; 32])).await;
    let (rig, good, other) = tokio::task::spawn_blocking(|| {
        let rig = rig(None);
        let tpm = rig.guest_tpm();
        let good = info_for(&tpm, &[1; 32]);
        let other = info_for(&tpm, &[2; 32]);
        (rig, good, other)
    })
    .await
    .unwrap();
    guest.log.lock().unwrap().ak_root = Some(rig.ak_root.clone());
    let client = maa(&double, &pki);
    let refusal = |info: serde_json::Value| {
        let client = client.clone();
        async move {
            match client.attest_azure_guest(&request_body(&info)).await {
                Err(SkrError::MaaRefused {
                    status: 400,
                    message,
                    ..
                }) => message,
                other => panic!("expected a refusal, got {:?}", other.map(|_| "a token")),
            }
        }
    };

    // A quote over another nonce than the one claimed (a stale quote).
    let mut stale = good.clone();
    stale["ClientPayload"]["nonce"] = STANDARD.encode([9u8; 32]).into();
    assert!(refusal(stale).await.contains("stale quote"));

    // A PCR value that is not what the TPM quoted.
    let mut pcrs = good.clone();
    pcrs["TpmInfo"]["PCRs"][3]["Digest"] = STANDARD.encode([7u8; 32]).into();
    assert!(refusal(pcrs).await.contains("PCR"));

    // A transfer key the AK did not certify (another key, with this nonce's certification).
    let mut uncertified = good.clone();
    uncertified["TpmInfo"]["EncKeyPub"] = other["TpmInfo"]["EncKeyPub"].clone();
    assert!(refusal(uncertified)
        .await
        .contains("not the key the AK certified"));

    // A certification signed over other data.
    let mut certify = good.clone();
    certify["TpmInfo"]["EncKeyCertifyInfoSignature"] =
        other["TpmInfo"]["EncKeyCertifyInfoSignature"].clone();
    assert!(refusal(certify)
        .await
        .contains("EncKeyCertifyInfoSignature"));

    // A quote signature that is not the AK's over this quote.
    let mut quote = good.clone();
    quote["TpmInfo"]["PcrSignature"] = other["TpmInfo"]["PcrSignature"].clone();
    assert!(refusal(quote).await.contains("PcrSignature"));

    // An AK certificate for another key (issued by the trusted CA, so only the key differs).
    let mut ak_cert = good.clone();
    let (_, foreign) = ak_certificate(&rsa_key().to_public_key());
    ak_cert["TpmInfo"]["AikCert"] = STANDARD.encode(foreign).into();
    assert!(refusal(ak_cert).await.contains("AikCert"));

    // Runtime claims the SNP report does not commit to.
    let mut runtime = good.clone();
    runtime["IsolationInfo"]["Evidence"]["RunTimeData"] = STANDARD.encode(b"{\"keys\":[]}").into();
    assert!(refusal(runtime).await.contains("report_data"));

    // The untouched evidence passes, once.
    let body = request_body(&good);
    let token = client.attest_azure_guest(&body).await.unwrap();
    assert!(!token.is_empty());
    let again = client.attest_azure_guest(&body).await.unwrap_err();
    assert!(again.to_string().contains("replay"), "{again}");
    assert_eq!(guest.log.lock().unwrap().refusals.len(), 8);
    drop(rig);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pcr_change_after_attestation_locks_the_transfer_key() {
    if !tools_present() {
        return;
    }
    let (pki, double, guest) = start_double(HeldKey::Oct(vec![1; 32])).await;
    let (rig, evidence) = tokio::task::spawn_blocking(|| {
        let rig = rig(None);
        let evidence = rig.guest_tpm().collect(&[5; 32]).unwrap();
        (rig, evidence)
    })
    .await
    .unwrap();
    guest.log.lock().unwrap().ak_root = Some(rig.ak_root.clone());
    let tpm = rig.guest_tpm();
    let info = attestation_info(
        &evidence,
        &[5; 32],
        &enclaveid_init::skr::guest::OsInfo::detect(),
    );
    let sealed = maa(&double, &pki)
        .attest_azure_guest(&request_body(&info))
        .await
        .unwrap();
    // Before the change the token opens; after PCR 7 moves, the TPM refuses the key's use.
    let key = evidence.key.clone();
    let (tpm2, sealed2) = (tpm.clone(), sealed.clone());
    tokio::task::spawn_blocking(move || {
        enclaveid_init::skr::guest::open_token(&sealed2, &tpm2, &key).unwrap()
    })
    .await
    .unwrap();
    rig.tpm.extend_pcr(7);
    let key = evidence.key.clone();
    let err = tokio::task::spawn_blocking(move || {
        enclaveid_init::skr::guest::open_token(&sealed, &tpm, &key).unwrap_err()
    })
    .await
    .unwrap();
    assert!(err.to_string().contains("TPM"), "{err}");
}
