//! The `akv:` back-end against Lowkey Vault, a real AKV emulator, through the official
//! crates over HTTPS: creating the exportable master-secret key with its release policy
//! (idempotently), storing and reading the CA certificate secret, and a 4xx that carries the
//! vault's own message; and `--no-skr`, the master secret as a plain secret. One Lowkey Vault for
//! the whole binary, in one test, killed on drop.

// Helpers outside #[test] fns panic on setup failure, like the tests themselves.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use enclaveid_init::policy::{PolicyFlags, ReleasePolicy};
use enclaveid_init::retry::RetryPolicy;
use enclaveid_init::vault::akv::{AkvOptions, AkvVault, KeySpec};
use enclaveid_init::vault::{Provisioned, Vault, VaultError};
use support::lowkey::{Lowkey, LowkeyToken};

fn policy() -> ReleasePolicy {
    ReleasePolicy::from_flags(&PolicyFlags {
        authority: "https://sharedeus.eus.attest.azure.net".into(),
        host_data: "ab".repeat(32),
        compliance_status: Some("azure-compliant-uvm".into()),
    })
    .unwrap()
}

fn vault(lowkey: &Lowkey, key_name: &str, spec: Option<KeySpec>) -> AkvVault {
    AkvVault::new(
        AkvOptions {
            url: lowkey.url.clone(),
            key_name: key_name.into(),
            ca_secret_name: format!("{key_name}-ca"),
            extra_roots: vec![lowkey.root.clone()],
            emulator: true,
            retry: RetryPolicy {
                deadline: Duration::from_secs(20),
                ..RetryPolicy::default()
            },
        },
        Arc::new(LowkeyToken {
            endpoint: lowkey.token_endpoint.clone(),
        }),
        spec,
        None,
    )
    .unwrap()
}

#[tokio::test]
async fn akv_backend_against_lowkey_vault() {
    // None only when the registry refused the jar (scripts/ci-deps/init.sh recorded it);
    // a missing install step fails under CI=true.
    let Some(lowkey) = Lowkey::start() else {
        return;
    };

    // Key creation, then idempotency: the second run finds it and changes nothing.
    let spec = KeySpec {
        kty: "RSA".into(),
        size: Some(2048),
        policy: policy(),
    };
    let v = vault(&lowkey, "master", Some(spec.clone()));
    assert_eq!(
        v.ensure_master_secret().await.unwrap(),
        Provisioned::Created
    );
    assert_eq!(
        v.ensure_master_secret().await.unwrap(),
        Provisioned::Existing
    );

    // The key is exportable and carries our release policy, read back with the official client.
    let keys = azure_security_keyvault_keys::KeyClient::new(
        &lowkey.url,
        Arc::new(LowkeyToken {
            endpoint: lowkey.token_endpoint.clone(),
        }),
        Some(azure_security_keyvault_keys::KeyClientOptions {
            verify_challenge_resource: Some(false),
            client_options: azure_core::http::ClientOptions {
                transport: Some(azure_core::http::Transport::new(Arc::new(
                    enclaveid_init::vault::akv::http_client(std::slice::from_ref(&lowkey.root))
                        .unwrap(),
                ))),
                ..Default::default()
            },
            ..Default::default()
        }),
    )
    .unwrap();
    let key = keys
        .get_key("master", None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    assert_eq!(key.attributes.unwrap().exportable, Some(true));
    let stored: serde_json::Value =
        serde_json::from_slice(&key.release_policy.unwrap().encoded_policy.unwrap()).unwrap();
    assert_eq!(stored["anyOf"][0]["allOf"][1]["equals"], "ab".repeat(32));

    // The CA certificate secret: absent, stored, read back unchanged.
    assert_eq!(v.ca_cert().await.unwrap(), None);
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    v.put_ca_cert(pem).await.unwrap();
    assert_eq!(v.ca_cert().await.unwrap().as_deref(), Some(pem));

    // A 4xx carries the vault's own message and is not retried.
    let bad = vault(
        &lowkey,
        "bad-key",
        Some(KeySpec {
            kty: "RSA".into(),
            size: Some(1000),
            policy: policy(),
        }),
    );
    let err = bad.ensure_master_secret().await.unwrap_err();
    let VaultError::Status {
        status, message, ..
    } = &err
    else {
        panic!("expected a status error, got {err}");
    };
    assert!((400..500).contains(status), "{err}");
    assert!(!message.is_empty(), "{err}");

    // No SKR configured: reading the secret says so instead of trying.
    let err = v.master_secret().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("secure key release is not configured"),
        "{err}"
    );

    no_skr(&lowkey, &keys).await;
}

/// `--no-skr`: the master secret as a plain secret, created once (never replaced), read back
/// the same, with our content type; no key is created; a foreign or missing secret is refused.
async fn no_skr(lowkey: &Lowkey, keys: &azure_security_keyvault_keys::KeyClient) {
    use base64::Engine as _;
    use enclaveid_init::vault::akv::plain;

    let v = vault(lowkey, "plain-key-unused", None)
        .with_plain_secret("dev-master")
        .unwrap();
    assert_eq!(
        v.ensure_master_secret().await.unwrap(),
        Provisioned::Created
    );
    assert_eq!(
        v.ensure_master_secret().await.unwrap(),
        Provisioned::Existing
    );
    let first = v.master_secret().await.unwrap();
    assert_eq!(first.expose().len(), plain::GENERATED_LEN);
    // Another pod (a fresh client) reads the same secret.
    let again = vault(lowkey, "plain-key-unused", None)
        .with_plain_secret("dev-master")
        .unwrap()
        .master_secret()
        .await
        .unwrap();
    assert_eq!(first.expose(), again.expose());

    // Stored as a secret with our content type, the value the base64 of those bytes, read
    // back with the official client; and no key was created.
    let secrets = azure_security_keyvault_secrets::SecretClient::new(
        &lowkey.url,
        Arc::new(LowkeyToken {
            endpoint: lowkey.token_endpoint.clone(),
        }),
        Some(azure_security_keyvault_secrets::SecretClientOptions {
            verify_challenge_resource: Some(false),
            client_options: azure_core::http::ClientOptions {
                transport: Some(azure_core::http::Transport::new(Arc::new(
                    enclaveid_init::vault::akv::http_client(std::slice::from_ref(&lowkey.root))
                        .unwrap(),
                ))),
                ..Default::default()
            },
            ..Default::default()
        }),
    )
    .unwrap();
    let stored = secrets
        .get_secret("dev-master", None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    assert_eq!(stored.content_type.as_deref(), Some(plain::CONTENT_TYPE));
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(stored.value.unwrap())
        .unwrap();
    assert_eq!(decoded, first.expose());
    let err = keys.get_key("plain-key-unused", None).await.unwrap_err();
    assert_eq!(err.http_status().map(u16::from), Some(404), "{err}");

    // A secret of another kind under that name (here the PEM CA certificate stored above) is
    // refused, not used as key material.
    let err = vault(lowkey, "plain-key-unused", None)
        .with_plain_secret("master-ca")
        .unwrap()
        .master_secret()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VaultError::Invalid { detail, .. } if detail.contains("content type")),
        "{err}"
    );

    // proxy/renew before secrets: a clear "not found".
    let err = vault(lowkey, "plain-key-unused", None)
        .with_plain_secret("never-written")
        .unwrap()
        .master_secret()
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::NotFound { .. }), "{err}");

    // The two modes never mix: a vault set up to create a key behind a policy refuses it.
    let spec = KeySpec {
        kty: "RSA".into(),
        size: Some(2048),
        policy: policy(),
    };
    let err = vault(lowkey, "master", Some(spec))
        .with_plain_secret("dev-master")
        .unwrap_err();
    assert!(err.to_string().contains("--no-skr"), "{err}");
}
