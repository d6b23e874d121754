//! AMD EPYC product generations that run SEV-SNP, and how each source names them.
//!
//! The product is learnt independently from the pinned ARK, the ASK and VCEK issuer names
//! (`SEV-Milan`), the VCEK product-name extension (`Milan-B0`, `Genoa`, `Turin`) and, from report
//! version 3 on, the report's CPUID family and model. The verifier requires all of them to agree.
//! Simulated chains name their product `Simulated-<Product>`; that marker is kept separately.

use serde::{Deserialize, Serialize};

/// An SEV-SNP capable AMD EPYC generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Product {
    /// 3rd generation EPYC (family 19h, models 00h-0Fh).
    Milan,
    /// 4th generation EPYC (family 19h, models 10h-1Fh and A0h-AFh).
    Genoa,
    /// 5th generation EPYC (family 1Ah, models 00h-1Fh); its TCB has an FMC SPL.
    Turin,
}

/// Prefix of product names in simulated (software) chains.
pub const SIMULATED_PREFIX: &str = "Simulated-";

impl Product {
    /// Every product the verifier knows.
    pub const ALL: [Product; 3] = [Product::Milan, Product::Genoa, Product::Turin];

    /// The name AMD uses in certificate subjects (`ARK-<name>`, `SEV-<name>`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Product::Milan => "Milan",
            Product::Genoa => "Genoa",
            Product::Turin => "Turin",
        }
    }

    /// True if the TCB version of this product carries an FMC SPL (Turin onwards).
    #[must_use]
    pub fn has_fmc(self) -> bool {
        matches!(self, Product::Turin)
    }

    /// Length of the VCEK hwID / meaningful chip ID prefix: 8 bytes on Turin, 64 before.
    #[must_use]
    pub fn hwid_len(self) -> usize {
        if self.has_fmc() {
            8
        } else {
            64
        }
    }

    /// Parses a product name, ignoring a stepping suffix (`Milan-B0`) and reporting whether the
    /// name carried the simulated marker. Returns `None` for unknown names.
    #[must_use]
    pub fn from_name(name: &str) -> Option<(Product, bool)> {
        let (simulated, rest) = match name.strip_prefix(SIMULATED_PREFIX) {
            Some(rest) => (true, rest),
            None => (false, name),
        };
        let base = rest.split('-').next().unwrap_or(rest);
        Product::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(base))
            .map(|p| (p, simulated))
    }

    /// Maps the report's CPUID family and model to a product.
    #[must_use]
    pub fn from_cpuid(family: u8, model: u8) -> Option<Product> {
        match (family, model) {
            (0x19, 0x00..=0x0F) => Some(Product::Milan),
            (0x19, 0x10..=0x1F | 0xA0..=0xAF) => Some(Product::Genoa),
            (0x1A, 0x00..=0x1F) => Some(Product::Turin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Product {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!(
            Product::from_name("Milan-B0"),
            Some((Product::Milan, false))
        );
        assert_eq!(Product::from_name("Genoa"), Some((Product::Genoa, false)));
        assert_eq!(
            Product::from_name("Simulated-Turin"),
            Some((Product::Turin, true))
        );
        assert_eq!(Product::from_name("Rome"), None);
    }

    #[test]
    fn cpuid_maps() {
        assert_eq!(Product::from_cpuid(0x19, 0x01), Some(Product::Milan));
        assert_eq!(Product::from_cpuid(0x19, 0x11), Some(Product::Genoa));
        assert_eq!(Product::from_cpuid(0x1A, 0x02), Some(Product::Turin));
        assert_eq!(Product::from_cpuid(0x17, 0x31), None);
    }
}
