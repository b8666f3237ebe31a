//! The workload certificate (groundwork for mutual TLS between sidecars): with
//! `--identity`, the proxy makes an ECDSA P-256 key at start — it never leaves the
//! process — and asks the controller's `Certificates` service (`weft.identity.v1`)
//! to sign it, presenting the same token as discovery. The controller decides the
//! name (the workload's SPIFFE ID). Each certificate is renewed at 70% of its
//! lifetime, for the same key (one key per proxy process); a failed request is
//! retried with backoff, 1 s doubling to 1 min, while the current certificate stays
//! in force. The current certificate is kept in [`IdentityStatus`], shown on the
//! admin `/identity`, and made into the rustls configurations of [`crate::mtls`]
//! (not on the data path yet).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use weft_api::identity::CertifyRequest;
use weft_api::CertificatesClient;

use crate::discovery::{authorized, controller_endpoint, credential, error_chain, DiscoveryConfig};
use crate::mtls::{Credentials, MeshTls};

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Renewal starts when this share of a certificate's lifetime has passed.
const RENEW_AT: f64 = 0.7;

/// A certificate the controller issued for this proxy's key.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Certificate {
    pub spiffe_id: String,
    /// The certificate, PEM (public; the key stays in the renewal task).
    pub cert_pem: String,
    /// The mesh's trust anchors, PEM.
    pub trust_bundle_pem: String,
    #[serde(with = "unix_seconds")]
    pub issued_at: SystemTime,
    #[serde(with = "unix_seconds")]
    pub not_after: SystemTime,
    #[serde(with = "unix_seconds")]
    pub renew_at: SystemTime,
}

/// What the identity task has done, for `/identity`.
#[derive(Debug, Default)]
pub struct IdentityStatus {
    current: Mutex<Option<Arc<Certificate>>>,
    issued: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Shared with the dialer ([`crate::tcp::connect::Connector`]).
    tls: Arc<MeshTls>,
}

impl IdentityStatus {
    /// The status of a proxy that runs `--identity` (`required`), or not.
    pub fn new(required: bool) -> Self {
        IdentityStatus {
            tls: Arc::new(if required {
                MeshTls::required()
            } else {
                MeshTls::default()
            }),
            ..IdentityStatus::default()
        }
    }

    /// The certificate in force, if one was issued.
    pub fn current(&self) -> Option<Arc<Certificate>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Trusts `bundle_pem` (discovery's; empty: none sent, nothing changes) from
    /// the next handshake, and shows it on `/identity`. An error (a bundle that
    /// cannot be read) changes nothing.
    pub fn trust(&self, bundle_pem: &str) -> Result<(), String> {
        if bundle_pem.is_empty() {
            return Ok(());
        }
        let changed = self
            .tls
            .trust(bundle_pem)
            .map_err(|e| format!("trust bundle: {e}"))?;
        if changed {
            tracing::info!("trust bundle changed (discovery)");
            let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(cert) = current.as_mut() {
                Arc::make_mut(cert).trust_bundle_pem = bundle_pem.to_owned();
            }
        }
        Ok(())
    }

    /// The certificate as TLS configurations, swapped at each renewal.
    pub fn tls(&self) -> &Arc<MeshTls> {
        &self.tls
    }

    /// `/identity`'s JSON.
    pub fn report(&self) -> serde_json::Value {
        serde_json::json!({
            "certificate": self.current().as_deref(),
            "issued": self.issued.load(Ordering::Relaxed),
            "failures": self.failures.load(Ordering::Relaxed),
            "last_error": *self.last_error.lock().unwrap_or_else(|e| e.into_inner()),
        })
    }

    fn set_error(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }
}

/// When a certificate valid from `issued_at` to `not_after` is renewed.
pub fn renewal_time(issued_at: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after.duration_since(issued_at).unwrap_or_default();
    issued_at + lifetime.mul_f64(RENEW_AT)
}

/// Keeps a certificate for this proxy's key, renewing it, until the task is
/// dropped. Fails only if no key can be made.
pub async fn run(config: DiscoveryConfig, status: Arc<IdentityStatus>) -> anyhow::Result<()> {
    let key = rcgen::KeyPair::generate()?;
    let csr_pem = rcgen::CertificateParams::default()
        .serialize_request(&key)?
        .pem()?;
    let mut backoff = BACKOFF_MIN;
    loop {
        let issued = certify(&config, &csr_pem).await.and_then(|cert| {
            let credentials = Credentials::new(
                &cert.spiffe_id,
                &cert.cert_pem,
                key.serialize_der(),
                &cert.trust_bundle_pem,
                cert.not_after,
            )
            .map_err(|e| tonic::Status::internal(format!("unusable certificate: {e}")))?;
            Ok((cert, credentials))
        });
        match issued {
            Ok((cert, credentials)) => {
                let wait = cert
                    .renew_at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tracing::info!(
                    spiffe_id = %cert.spiffe_id,
                    renew_in = ?wait,
                    "workload certificate issued"
                );
                status.issued.fetch_add(1, Ordering::Relaxed);
                status.set_error(None);
                *status.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(cert));
                status.tls.install(credentials);
                backoff = BACKOFF_MIN;
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                let message = format!("{:?}: {}", e.code(), e.message());
                tracing::warn!(error = %message, retry_in = ?backoff, "no workload certificate");
                status.failures.fetch_add(1, Ordering::Relaxed);
                status.set_error(Some(message));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// One Certify call for `csr_pem`.
async fn certify(config: &DiscoveryConfig, csr_pem: &str) -> Result<Certificate, tonic::Status> {
    let credential = credential(config)?;
    let channel = controller_endpoint(&config.controller)?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(error_chain(&e)))?;
    let request = CertifyRequest {
        csr_pem: csr_pem.to_owned(),
        lifetime_seconds: 0,
    };
    let issued_at = SystemTime::now();
    let got = CertificatesClient::new(channel)
        .certify(authorized(request, credential.as_ref()))
        .await?
        .into_inner();
    let not_after = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(got.not_after_unix_seconds).unwrap_or(0));
    if not_after <= issued_at {
        return Err(tonic::Status::internal(
            "the controller sent a certificate that has already expired",
        ));
    }
    Ok(Certificate {
        spiffe_id: got.spiffe_id,
        cert_pem: got.cert_pem,
        trust_bundle_pem: got.trust_bundle_pem,
        issued_at,
        not_after,
        renew_at: renewal_time(issued_at, not_after),
    })
}

/// A `SystemTime` as whole seconds since the Unix epoch.
mod unix_seconds {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        s.serialize_u64(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_seventy_percent_of_the_lifetime() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(renewal_time(t0, t0 + day), t0 + Duration::from_secs(60480));
        // An expiry before the issue time renews at once.
        assert_eq!(renewal_time(t0, t0 - day), t0);
    }
}
