//! Lowkey Vault (a real Azure Key Vault emulator, `com.github.nagyesta.lowkey-vault:
//! lowkey-vault-app`) started on free loopback ports with our own PKCS#12 keystore, so the
//! official Key Vault crates talk to it over HTTPS that trusts exactly the test root. Killed by
//! PID on drop. `scripts/ci-deps/init.sh` fetches the jar.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;

/// The Lowkey Vault version `scripts/ci-deps/init.sh` fetches.
pub const LOWKEY_VERSION: &str = "7.3.74";
/// The Java that runs it.
pub const JAVA: &str = "/usr/lib/jvm/temurin-25-jdk-amd64/bin/java";

/// Where the jar is: `$LOWKEY_VAULT_JAR`, else the `~/.m2` path of [`LOWKEY_VERSION`].
pub fn jar() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("LOWKEY_VAULT_JAR") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var("HOME").ok()?;
    let p = PathBuf::from(home).join(format!(
        ".m2/repository/com/github/nagyesta/lowkey-vault/lowkey-vault-app/{LOWKEY_VERSION}/lowkey-vault-app-{LOWKEY_VERSION}.jar"
    ));
    p.exists().then_some(p)
}

/// True if `scripts/ci-deps/init.sh` ran and the package registry refused the jar.
pub fn registry_refused() -> bool {
    std::env::var("HOME").is_ok_and(|home| {
        PathBuf::from(home)
            .join(format!(
                ".m2/repository/com/github/nagyesta/lowkey-vault/lowkey-vault-app/{LOWKEY_VERSION}.unavailable"
            ))
            .exists()
    })
}

/// A running Lowkey Vault.
pub struct Lowkey {
    child: Child,
    dir: tempfile::TempDir,
    /// `https://localhost:PORT`: the vault URL.
    pub url: String,
    /// The token endpoint (managed-identity style) on the HTTP port.
    pub token_endpoint: String,
    /// The root that signed Lowkey's TLS certificate.
    pub root: CertificateDer<'static>,
}

impl Drop for Lowkey {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Lowkey {
    /// Starts Lowkey Vault, or returns None (after saying so loudly) if the jar or Java is
    /// missing.
    pub fn start() -> Option<Self> {
        let Some(jar) = jar() else {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            assert!(
                !ci || registry_refused(),
                "Lowkey Vault jar not found and scripts/ci-deps/init.sh has not run: run it (or set LOWKEY_VAULT_JAR)"
            );
            eprintln!(
                "\n#### Lowkey Vault jar not found (the package registry refused it, see \
                 scripts/ci-deps/init.sh); the Lowkey Vault tests are SKIPPED ####\n"
            );
            return None;
        };
        let java = std::env::var("LOWKEY_JAVA").unwrap_or_else(|_| JAVA.to_owned());
        if !std::path::Path::new(&java).exists() {
            eprintln!("\n#### {java} missing (Temurin 25): Lowkey Vault tests SKIPPED ####\n");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // Our own keystore: an RSA leaf for localhost (Lowkey's default cipher list is
        // ECDHE-RSA) signed by a throwaway root, packed as PKCS#12 by openssl.
        let root_key = rcgen::KeyPair::generate().unwrap();
        let mut root_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root = root_params.self_signed(&root_key).unwrap();
        let issuer = rcgen::Issuer::new(root_params, root_key);
        let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
            .or_else(|_| {
                use rsa::pkcs8::EncodePrivateKey as _;
                let k = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
                let der = k.to_pkcs8_der().unwrap();
                rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
                    &rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_bytes()),
                    &rcgen::PKCS_RSA_SHA256,
                )
            })
            .unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let cert_pem = dir.path().join("cert.pem");
        let key_pem = dir.path().join("key.pem");
        let p12 = dir.path().join("keystore.p12");
        std::fs::write(&cert_pem, leaf.pem()).unwrap();
        std::fs::write(&key_pem, leaf_key.serialize_pem()).unwrap();
        let status = Command::new("openssl")
            .args(["pkcs12", "-export", "-in"])
            .arg(&cert_pem)
            .arg("-inkey")
            .arg(&key_pem)
            .arg("-out")
            .arg(&p12)
            .args(["-passout", "pass:changeit", "-name", "lowkey"])
            .status()
            .expect("openssl (scripts/ci-deps/base.sh) is needed to build Lowkey Vault's keystore");
        assert!(status.success(), "openssl pkcs12 -export failed");

        let port = free_port();
        let token_port = free_port();
        let log = std::fs::File::create(dir.path().join("lowkey.log")).unwrap();
        let child = Command::new(&java)
            .arg("-jar")
            .arg(&jar)
            .arg(format!("--server.port={port}"))
            .arg(format!("--app.token.port={token_port}"))
            .arg(format!("--server.ssl.key-store={}", p12.display()))
            .arg("--server.ssl.key-store-password=changeit")
            .arg("--server.ssl.key-store-type=PKCS12")
            .arg("--server.address=127.0.0.1")
            .arg("--LOWKEY_VAULT_RELAXED_PORTS=true")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start Lowkey Vault");
        let mut me = Self {
            child,
            url: format!("https://localhost:{port}"),
            token_endpoint: format!("http://127.0.0.1:{token_port}/metadata/identity/oauth2/token"),
            root: root.der().clone(),
            dir,
        };
        me.wait_ready(port, token_port);
        Some(me)
    }

    fn wait_ready(&mut self, port: u16, token_port: u16) {
        let deadline = Instant::now() + Duration::from_mins(2);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log =
                    std::fs::read_to_string(self.dir.path().join("lowkey.log")).unwrap_or_default();
                panic!("Lowkey Vault exited with {status} during start-up:\n{log}");
            }
            let up = |p: u16| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok();
            if up(port) && up(token_port) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Lowkey Vault did not open ports {port}/{token_port} within 120 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A credential that asks Lowkey Vault's managed-identity style token endpoint for a token,
/// as the App Service managed identity protocol does.
#[derive(Debug)]
pub struct LowkeyToken {
    /// The endpoint.
    pub endpoint: String,
}

#[async_trait::async_trait]
impl azure_core::credentials::TokenCredential for LowkeyToken {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        let resource = scopes.first().map_or("https://vault.azure.net", |s| {
            s.trim_end_matches("/.default")
        });
        let other = |e: String| {
            azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, e)
        };
        let body = reqwest::Client::new()
            .get(format!(
                "{}?resource={resource}&api-version=2019-08-01",
                self.endpoint
            ))
            .header("X-IDENTITY-HEADER", "header")
            .send()
            .await
            .map_err(|e| other(e.to_string()))?
            .text()
            .await
            .map_err(|e| other(e.to_string()))?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| other(e.to_string()))?;
        let token = v["access_token"]
            .as_str()
            .ok_or_else(|| other(format!("no access_token in {body}")))?;
        Ok(azure_core::credentials::AccessToken::new(
            token.to_owned(),
            time::OffsetDateTime::now_utc() + time::Duration::minutes(30),
        ))
    }
}
