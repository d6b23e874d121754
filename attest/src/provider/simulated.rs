//! The `simulated` provider: development and tests only.
//!
//! At start-up it makes a software ARK → ASK → VCEK chain (the verifier crate's `simulated`
//! feature: RSA-4096 ARK/ASK, P-384 VCEK, names `ARK-Simulated-<product>`), and signs a fresh
//! SNP report for every request with `report_data` = the binding. Its evidence says
//! `"provider": "simulated"`, its ARK matches no pinned AMD root, and every verifier refuses it
//! unless told `--allow-simulated`.

use enclaveid_attest_verifier::simulated::{ReportFields, SimulatedChain, SimulatedOptions};
use enclaveid_attest_verifier::Product;

use super::{Evidence, EvidenceProvider, ProviderError};

/// Signs reports with a software chain made at start-up.
#[derive(Debug)]
pub struct SimulatedProvider {
    chain: SimulatedChain,
    fields: ReportFields,
}

impl SimulatedProvider {
    /// Makes a Milan-shaped chain (two RSA-4096 keys: this takes seconds).
    pub fn new() -> Result<Self, ProviderError> {
        Self::with_chain(
            SimulatedChain::new().map_err(|e| ProviderError::Simulated(e.to_string()))?,
            ReportFields::default(),
        )
    }

    /// A chain imitating `product`, reports with `fields`.
    pub fn for_product(product: Product, fields: ReportFields) -> Result<Self, ProviderError> {
        let options = SimulatedOptions {
            product,
            ..SimulatedOptions::default()
        };
        let chain = SimulatedChain::with_options(options)
            .map_err(|e| ProviderError::Simulated(e.to_string()))?;
        Self::with_chain(chain, fields)
    }

    /// Uses an existing chain (tests share one per process).
    pub fn with_chain(chain: SimulatedChain, fields: ReportFields) -> Result<Self, ProviderError> {
        Ok(Self { chain, fields })
    }

    /// The chain, e.g. to provision a simulated HCL report for the vTPM tests.
    #[must_use]
    pub fn chain(&self) -> &SimulatedChain {
        &self.chain
    }
}

impl EvidenceProvider for SimulatedProvider {
    fn name(&self) -> &'static str {
        "simulated"
    }

    fn evidence(&self, report_data: [u8; 64]) -> Result<Evidence, ProviderError> {
        Ok(self.chain.evidence(&report_data, &self.fields))
    }
}
