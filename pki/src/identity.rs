//! Workload identities: the SPIFFE URI `spiffe://<td>/ns/<ns>/sa/<sa>` and the DNS names that a
//! leaf carries as SANs, their extraction from a certificate, and the `allow` patterns that an
//! inbound listener matches them against (`*` stands for exactly one DNS label or path segment).

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The default SPIFFE trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Why an identity, a certificate's SANs or an allow pattern could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The string is not `spiffe://<td>/ns/<ns>/sa/<sa>`.
    #[error("{value:?} is not a SPIFFE workload ID (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>): {why}")]
    NotSpiffe {
        /// The offending string.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The certificate is not valid DER X.509.
    #[error("certificate is not valid X.509 DER: {0}")]
    BadCertificate(String),
    /// An allow pattern is empty or has an empty label.
    #[error("allow pattern {pattern:?} is invalid: {why}")]
    BadPattern {
        /// The offending pattern.
        pattern: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// A SPIFFE workload ID of the form `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    /// Builds an ID from its parts, checking that each is a non-empty path segment.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        let id = Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        };
        Self::parse(&id.to_string())
    }

    /// Parses `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn parse(value: &str) -> Result<Self, IdentityError> {
        let err = |why| IdentityError::NotSpiffe {
            value: value.to_owned(),
            why,
        };
        let rest = value
            .strip_prefix("spiffe://")
            .ok_or_else(|| err("missing the spiffe:// scheme"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [td, "ns", ns, "sa", sa] = parts.as_slice() else {
            return Err(err("the path must be /ns/<namespace>/sa/<service-account>"));
        };
        if td.is_empty() || ns.is_empty() || sa.is_empty() {
            return Err(err("an empty trust domain, namespace or service account"));
        }
        let ok = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        };
        if !ok(td) || !ok(ns) || !ok(sa) {
            return Err(err(
                "only letters, digits, '-', '.' and '_' are allowed in each segment",
            ));
        }
        Ok(Self {
            trust_domain: (*td).to_owned(),
            namespace: (*ns).to_owned(),
            service_account: (*sa).to_owned(),
        })
    }

    /// The trust domain, e.g. `cluster.local`.
    #[must_use]
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The Kubernetes namespace.
    #[must_use]
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Kubernetes service account.
    #[must_use]
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// The DNS names a workload `<svc>` in namespace `<ns>` carries: `<svc>.<ns>.svc.cluster.local`
/// and `<svc>.<ns>.svc`.
#[must_use]
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}.svc"),
    ]
}

/// The identity-bearing SANs of a certificate: URIs (SPIFFE IDs) and DNS names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// URI SANs, in certificate order.
    pub uris: Vec<String>,
    /// DNS SANs, in certificate order.
    pub dns_names: Vec<String>,
}

impl PeerIdentity {
    /// Reads the SANs of a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let mut out = Self::default();
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        if let Some(san) = san {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => out.uris.push((*u).to_owned()),
                    GeneralName::DNSName(d) => out.dns_names.push((*d).to_owned()),
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// The first URI SAN that is a SPIFFE workload ID.
    #[must_use]
    pub fn spiffe_id(&self) -> Option<SpiffeId> {
        self.uris.iter().find_map(|u| SpiffeId::parse(u).ok())
    }

    /// Whether any SAN matches any of the patterns.
    #[must_use]
    pub fn is_allowed(&self, patterns: &[AllowPattern]) -> bool {
        patterns.iter().any(|p| p.matches_identity(self))
    }
}

/// One `allow` entry: a SPIFFE URI or a DNS name, where `*` matches exactly one DNS label (in a
/// DNS pattern or the URI's trust domain) or one path segment (in the URI's path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowPattern {
    raw: String,
    kind: PatternKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PatternKind {
    /// Lower-cased DNS labels.
    Dns(Vec<String>),
    /// Trust-domain labels (lower-cased) and path segments.
    Uri {
        authority: Vec<String>,
        path: Vec<String>,
    },
}

impl AllowPattern {
    /// Parses a pattern such as `spiffe://cluster.local/ns/default/sa/*` or `*.default.svc`.
    pub fn parse(pattern: &str) -> Result<Self, IdentityError> {
        let err = |why| IdentityError::BadPattern {
            pattern: pattern.to_owned(),
            why,
        };
        if pattern.is_empty() {
            return Err(err("empty pattern"));
        }
        let kind = if let Some(rest) = pattern.strip_prefix("spiffe://") {
            let (authority, path) = rest
                .split_once('/')
                .ok_or_else(|| err("a SPIFFE pattern needs a path"))?;
            let authority =
                labels(authority).ok_or_else(|| err("empty label in the trust domain"))?;
            let path: Vec<String> = path.split('/').map(str::to_owned).collect();
            if path.iter().any(String::is_empty) {
                return Err(err("empty path segment"));
            }
            PatternKind::Uri { authority, path }
        } else if pattern.contains("://") {
            return Err(err("only spiffe:// URIs and DNS names are supported"));
        } else {
            PatternKind::Dns(labels(pattern).ok_or_else(|| err("empty DNS label"))?)
        };
        if pattern
            .split(['.', '/'])
            .any(|part| part.contains('*') && part != "*")
        {
            return Err(err("'*' must stand alone for a whole label or segment"));
        }
        Ok(Self {
            raw: pattern.to_owned(),
            kind,
        })
    }

    /// The pattern as written.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether a single URI or DNS SAN matches.
    #[must_use]
    pub fn matches(&self, san: &str) -> bool {
        match &self.kind {
            PatternKind::Dns(want) => {
                !san.contains("://")
                    && labels(san).is_some_and(|got| segments_match(want, &got, true))
            }
            PatternKind::Uri { authority, path } => {
                let Some(rest) = san.strip_prefix("spiffe://") else {
                    return false;
                };
                let Some((auth, p)) = rest.split_once('/') else {
                    return false;
                };
                let Some(auth) = labels(auth) else {
                    return false;
                };
                let p: Vec<String> = p.split('/').map(str::to_owned).collect();
                segments_match(authority, &auth, true) && segments_match(path, &p, false)
            }
        }
    }

    /// Whether any SAN of the identity matches.
    #[must_use]
    pub fn matches_identity(&self, id: &PeerIdentity) -> bool {
        match self.kind {
            PatternKind::Dns(_) => id.dns_names.iter().any(|d| self.matches(d)),
            PatternKind::Uri { .. } => id.uris.iter().any(|u| self.matches(u)),
        }
    }
}

impl fmt::Display for AllowPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Splits a host name into lower-cased labels, ignoring one trailing dot; `None` on an empty label.
fn labels(name: &str) -> Option<Vec<String>> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let out: Vec<String> = name.split('.').map(str::to_ascii_lowercase).collect();
    if out.iter().any(String::is_empty) {
        None
    } else {
        Some(out)
    }
}

fn segments_match(want: &[String], got: &[String], case_insensitive: bool) -> bool {
    want.len() == got.len()
        && want.iter().zip(got).all(|(w, g)| {
            w == "*" && !g.is_empty()
                || if case_insensitive {
                    w.eq_ignore_ascii_case(g)
                } else {
                    w == g
                }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_round_trip() {
        let id = SpiffeId::new("cluster.local", "default", "frontend").unwrap();
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/frontend"
        );
        assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id);
        for bad in [
            "http://x/ns/a/sa/b",
            "spiffe://x/ns/a",
            "spiffe:///ns/a/sa/b",
            "spiffe://x/ns/a/sa/b/c",
            "spiffe://x/ns/a b/sa/c",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pattern_table() {
        let cases: &[(&str, &str, bool)] = &[
            (
                "*.default.svc.cluster.local",
                "api.default.svc.cluster.local",
                true,
            ),
            (
                "*.default.svc.cluster.local",
                "a.b.default.svc.cluster.local",
                false,
            ),
            (
                "*.default.svc.cluster.local",
                "default.svc.cluster.local",
                false,
            ),
            (
                "*.default.svc.cluster.local",
                "API.Default.svc.cluster.local.",
                true,
            ),
            ("api.default.svc", "api.default.svc", true),
            ("api.default.svc", "api.other.svc", false),
            (
                "spiffe://cluster.local/ns/default/sa/frontend",
                "spiffe://cluster.local/ns/default/sa/frontend",
                true,
            ),
            (
                "spiffe://cluster.local/ns/default/sa/frontend",
                "spiffe://cluster.local/ns/default/sa/backend",
                false,
            ),
            (
                "spiffe://cluster.local/ns/default/sa/*",
                "spiffe://cluster.local/ns/default/sa/backend",
                true,
            ),
            (
                "spiffe://cluster.local/ns/*/sa/x",
                "spiffe://cluster.local/ns/a/b/sa/x",
                false,
            ),
            (
                "spiffe://cluster.local/ns/default/sa/frontend",
                "frontend.default.svc",
                false,
            ),
            (
                "*.default.svc",
                "spiffe://cluster.local/ns/default/sa/frontend",
                false,
            ),
        ];
        for (pattern, san, want) in cases {
            assert_eq!(
                AllowPattern::parse(pattern).unwrap().matches(san),
                *want,
                "{pattern} vs {san}"
            );
        }
        for bad in ["", "a..b", "ab*.c", "https://x/y", "spiffe://x"] {
            assert!(AllowPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
