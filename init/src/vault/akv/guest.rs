//! Secure Key Release on an Azure confidential VM (`--evidence vtpm`): the same AKV release
//! call as [`super::AkvVault`]'s SNP path, but the transfer key lives in the vTPM and the
//! attestation is MAA's guest flow (`attest/AzureGuest`, see [`crate::skr::guest`]).
//!
//! 1. A fresh 32-byte nonce; the TPM quotes the PCRs and certifies a new transfer key over it.
//! 2. `POST {maa}/attest/AzureGuest`; the answer is a token encrypted to the TPM key, opened
//!    inside the TPM (`TPM2_RSA_Decrypt`) and with AES-GCM in memory.
//! 3. `POST {vault}/keys/{name}/{version}/release` with that token; the release JWS is checked
//!    as on the SNP path.
//! 4. `key_hsm`'s RSA-OAEP block is decrypted inside the TPM, the AES key unwrap runs in
//!    memory; the master secret exists only in memory and is zeroized on drop.

use std::sync::Arc;
use std::time::SystemTime;

use enclaveid_pki::derive::MasterSecret;
use rustls_pki_types::{CertificateDer, UnixTime};
use zeroize::Zeroizing;

use super::AkvVault;
use crate::evidence::EvidenceError;
use crate::evidence_vtpm::{GuestTpm, TpmKeyRef};
use crate::retry::retry;
use crate::skr::guest::{self, OsInfo, TpmTransferKey};
use crate::skr::{self, MaaClient};
use crate::vault::VaultError;

/// What SKR needs on a CVM.
pub struct GuestSkr {
    /// MAA base URL.
    pub maa: MaaClient,
    /// The vTPM.
    pub tpm: Arc<GuestTpm>,
    /// Trust anchors for the release JWS's `x5c` chain.
    pub jws_roots: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for GuestSkr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestSkr")
            .field("jws_roots", &self.jws_roots.len())
            .finish_non_exhaustive()
    }
}

fn tpm_failed(e: &dyn std::fmt::Display) -> VaultError {
    VaultError::Evidence(EvidenceError::Provider {
        provider: "vtpm".into(),
        detail: e.to_string(),
    })
}

fn task_failed(e: &tokio::task::JoinError) -> VaultError {
    VaultError::Evidence(EvidenceError::Task(e.to_string()))
}

impl AkvVault {
    /// Releases through the vTPM guest flow instead of SNP evidence.
    #[must_use]
    pub fn with_guest_skr(mut self, guest: GuestSkr) -> Self {
        self.guest = Some(guest);
        self
    }

    pub(super) async fn release_guest(
        &self,
        guest: &GuestSkr,
        version: &str,
    ) -> Result<MasterSecret, VaultError> {
        // Each attempt attests afresh (new nonce, new transfer key): a nonce is single-use, and a
        // token that arrives expired (or too close to it) is transient, as on the SNP path.
        let (token, key) = retry(self.retry, "attesting to MAA (AzureGuest)", || {
            self.attest_guest(guest)
        })
        .await?;
        let jws = self.release_with_token(&token, version).await?;
        let payload = skr::verify_release_jws(&jws, &guest.jws_roots, &self.host, UnixTime::now())?;
        let transfer_key = TpmTransferKey {
            tpm: guest.tpm.clone(),
            key,
        };
        let released =
            tokio::task::spawn_blocking(move || skr::unwrap_released_key(&payload, &transfer_key))
                .await
                .map_err(|e| task_failed(&e))??;
        Ok(skr::master_secret_from_release(
            &released.kty,
            &released.plaintext,
        )?)
    }

    /// One attestation: evidence over a fresh nonce, `attest/AzureGuest`, the token opened in
    /// the TPM and checked for enough remaining validity. Returns the token and its TPM key.
    async fn attest_guest(
        &self,
        guest: &GuestSkr,
    ) -> Result<(Zeroizing<String>, TpmKeyRef), VaultError> {
        let nonce: [u8; 32] = rand::random();
        let tpm = guest.tpm.clone();
        let evidence = tokio::task::spawn_blocking(move || tpm.collect(&nonce))
            .await
            .map_err(|e| task_failed(&e))?
            .map_err(|e| tpm_failed(&e))?;
        let body = guest::request_body(&guest::attestation_info(
            &evidence,
            &nonce,
            &OsInfo::detect(),
        ));
        let sealed = guest.maa.attest_azure_guest(&body).await?;
        let (tpm, key) = (guest.tpm.clone(), evidence.key.clone());
        let token = tokio::task::spawn_blocking(move || guest::open_token(&sealed, &tpm, &key))
            .await
            .map_err(|e| task_failed(&e))??;
        skr::check_token_fresh(&guest.maa.azure_guest_url(), &token, SystemTime::now())?;
        Ok((token, evidence.key))
    }
}
