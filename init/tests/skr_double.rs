//! Secure Key Release end to end against the MAA + key-release TEST DOUBLE
//! (`support/double.rs`) over real HTTPS: the official Key Vault client (with its bearer
//! challenge), MAA `attest/SevSnpVm` with simulated SNP evidence from the attest crate, the
//! release JWS chain check and the `CKM_RSA_AES_KEY_WRAP` unwrap, plus every refusal.

// Helpers outside #[test] fns panic on setup failure, like the tests themselves.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use enclaveid_init::retry::RetryPolicy;
use enclaveid_init::skr::{MaaClient, SkrError};
use enclaveid_init::vault::akv::{http_client, AkvOptions, AkvVault, SkrSetup};
use enclaveid_init::vault::VaultError;
use enclaveid_pki::derive::{derive_ca_key, MasterSecret, VaultKeyType};
use rsa::traits::PrivateKeyParts as _;
use support::double::{Double, HeldKey, TestPki};
use support::{simulated_evidence, StaticToken};

fn vault(double: &Double, pki: &TestPki, deadline: Duration, jws_root: &TestPki) -> AkvVault {
    let roots = vec![pki.root_der.clone()];
    AkvVault::new(
        AkvOptions {
            url: double.base.clone(),
            key_name: "master".into(),
            ca_secret_name: "ca".into(),
            extra_roots: roots.clone(),
            emulator: true,
            retry: RetryPolicy {
                deadline,
                initial_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(200),
            },
        },
        Arc::new(StaticToken),
        None,
        Some(SkrSetup {
            maa: MaaClient::new(&double.base, http_client(&roots).unwrap()),
            evidence: simulated_evidence(),
            jws_roots: vec![jws_root.root_der.clone()],
        }),
    )
    .unwrap()
}

async fn setup(held: HeldKey) -> (Arc<TestPki>, Double) {
    let pki = Arc::new(TestPki::new());
    let double = Double::start(pki.clone(), held).await;
    (pki, double)
}

/// Releases with a bound on the whole exchange, so a hang fails the test instead of stalling it.
async fn release(
    v: &AkvVault,
    version: &str,
) -> Result<enclaveid_pki::derive::MasterSecret, VaultError> {
    tokio::time::timeout(Duration::from_mins(1), v.release_version(version))
        .await
        .expect("the release exchange finishes within a minute")
}

fn rsa_key() -> rsa::RsaPrivateKey {
    rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap()
}

#[tokio::test]
async fn rsa_key_is_released_and_becomes_the_same_master_secret() {
    let held = rsa_key();
    let (pki, double) = setup(HeldKey::Rsa(Box::new(held.clone()))).await;
    let v = vault(&double, &pki, Duration::from_secs(10), &pki);
    let released = release(&v, "v1").await.unwrap();
    let expected =
        MasterSecret::from_vault_key(VaultKeyType::Rsa, &held.d().to_bytes_be()).unwrap();
    assert_eq!(released.expose(), expected.expose());
    assert_eq!(
        derive_ca_key(&released).public_key(),
        derive_ca_key(&expected).public_key()
    );
    let seen = double.behaviour.lock().unwrap().seen.clone();
    // The bearer challenge first, then the release; the double's AKV side fetches the MAA
    // JWKS to verify the token while handling it.
    assert_eq!(
        seen,
        [
            "POST /attest/SevSnpVm",
            "POST /keys/master/v1/release",
            "POST /keys/master/v1/release",
            "GET /certs",
        ]
    );
}

#[tokio::test]
async fn oct_key_is_released_raw() {
    let secret: Vec<u8> = (0u8..32).collect();
    let (pki, double) = setup(HeldKey::Oct(secret.clone())).await;
    let v = vault(&double, &pki, Duration::from_secs(10), &pki);
    let released = release(&v, "v2").await.unwrap();
    assert_eq!(released.expose(), secret.as_slice());
}

#[tokio::test]
async fn transient_maa_failures_are_retried() {
    let (pki, double) = setup(HeldKey::Oct(vec![1; 32])).await;
    double
        .behaviour
        .lock()
        .unwrap()
        .maa_failures
        .extend([503, 429]);
    let v = vault(&double, &pki, Duration::from_secs(10), &pki);
    release(&v, "v1").await.unwrap();
    let attests = double
        .behaviour
        .lock()
        .unwrap()
        .seen
        .iter()
        .filter(|s| s.contains("attest"))
        .count();
    assert_eq!(attests, 3);
}

#[tokio::test]
async fn a_busy_maa_exhausts_the_deadline() {
    let (pki, double) = setup(HeldKey::Oct(vec![1; 32])).await;
    double
        .behaviour
        .lock()
        .unwrap()
        .maa_failures
        .extend([503; 1000]);
    let v = vault(&double, &pki, Duration::from_millis(800), &pki);
    let err = release(&v, "v1").await.unwrap_err();
    assert!(
        matches!(err, VaultError::GaveUp { attempts, .. } if attempts > 1),
        "{err}"
    );
    assert!(err.to_string().contains("503"), "{err}");
}

#[tokio::test]
async fn a_policy_refusal_shows_the_vaults_message() {
    let (pki, double) = setup(HeldKey::Oct(vec![1; 32])).await;
    double.behaviour.lock().unwrap().required_host_data = Some("ab".repeat(32));
    let v = vault(&double, &pki, Duration::from_secs(10), &pki);
    let err = release(&v, "v1").await.unwrap_err();
    let VaultError::Status {
        status, message, ..
    } = &err
    else {
        panic!("expected a status error, got {err}");
    };
    assert_eq!(*status, 403);
    assert!(
        message.contains("AccessDenied") && message.contains("release policy"),
        "{message}"
    );
}

#[tokio::test]
async fn a_forged_or_tampered_release_is_refused() {
    let (pki, double) = setup(HeldKey::Oct(vec![1; 32])).await;
    let v = vault(&double, &pki, Duration::from_secs(10), &pki);
    double.behaviour.lock().unwrap().wrong_jws_signer = true;
    let err = release(&v, "v1").await.unwrap_err();
    assert!(
        matches!(err, VaultError::Skr(SkrError::Signature { .. })),
        "{err}"
    );

    {
        let mut b = double.behaviour.lock().unwrap();
        b.wrong_jws_signer = false;
        b.tamper_payload = true;
    }
    let err = release(&v, "v1").await.unwrap_err();
    assert!(
        matches!(err, VaultError::Skr(SkrError::Signature { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn a_release_chain_to_an_untrusted_root_is_refused() {
    let (pki, double) = setup(HeldKey::Oct(vec![1; 32])).await;
    let other = TestPki::new();
    let v = vault(&double, &pki, Duration::from_secs(10), &other);
    let err = release(&v, "v1").await.unwrap_err();
    assert!(
        matches!(err, VaultError::Skr(SkrError::Chain { .. })),
        "{err}"
    );
}
