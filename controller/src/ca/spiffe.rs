//! SPIFFE IDs, the names weft's workload certificates carry in their URI SAN:
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` on Kubernetes and
//! `spiffe://<trust-domain>/ns/local/sa/<workload>` in the local mesh.

use std::fmt;

/// A SPIFFE ID of weft's shape, validated (SPIFFE ID spec: a lowercase trust
/// domain of `[a-z0-9._-]`, path segments of `[A-Za-z0-9._-]`, none empty, `.`
/// or `..`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId(String);

/// Why a name cannot be part of a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    #[error("trust domain {0:?}: use lowercase letters, digits, '.', '-' and '_'")]
    TrustDomain(String),
    #[error("path segment {0:?}: use letters, digits, '.', '-' and '_' (not '.' or '..' alone)")]
    Segment(String),
}

/// The namespace segment of local-mesh workloads.
const LOCAL_NAMESPACE: &str = "local";

impl SpiffeId {
    /// `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeError> {
        check_trust_domain(trust_domain)?;
        check_name(namespace)?;
        check_name(service_account)?;
        Ok(SpiffeId(format!(
            "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
        )))
    }

    /// A local-mesh workload's ID: `spiffe://<trust_domain>/ns/local/sa/<workload>`.
    pub fn local(trust_domain: &str, workload: &str) -> Result<SpiffeId, SpiffeError> {
        SpiffeId::new(trust_domain, LOCAL_NAMESPACE, workload)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a trust domain name (`--trust-domain`).
pub fn check_trust_domain(td: &str) -> Result<(), SpiffeError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SpiffeError::TrustDomain(td.to_owned()))
    }
}

/// Checks a name that becomes a path segment (a namespace, a service account, a
/// local workload).
pub fn check_name(s: &str) -> Result<(), SpiffeError> {
    let ok = !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SpiffeError::Segment(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_both_shapes() {
        assert_eq!(
            SpiffeId::new("cluster.local", "shop", "checkout")
                .map(|i| i.to_string())
                .as_deref(),
            Ok("spiffe://cluster.local/ns/shop/sa/checkout")
        );
        assert_eq!(
            SpiffeId::local("weft.local", "backend")
                .map(|i| i.to_string())
                .as_deref(),
            Ok("spiffe://weft.local/ns/local/sa/backend")
        );
    }

    #[test]
    fn names_that_would_bend_the_path_are_refused() {
        for bad in ["", ".", "..", "a/b", "a b", "é", "a?b", "a#b", "a%2f"] {
            assert!(
                SpiffeId::local("weft.local", bad).is_err(),
                "segment {bad:?}"
            );
        }
        for bad in ["", "Weft.local", "weft/local", "weft:80", "a b"] {
            assert!(SpiffeId::local(bad, "backend").is_err(), "domain {bad:?}");
        }
    }
}
