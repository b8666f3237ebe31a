//! The `Certificates` gRPC service (`weft.identity.v1`): a proxy's CSR signed for
//! the identity its credential carries (see [`super`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tonic::{Request, Response, Status};
use weft_api::identity as pb;

use super::{Ca, CaError, SpiffeId, MIN_LIFETIME};
use crate::auth::{Auth, Caller};

/// What the controller's CA is configured with (`--ca-dir`, `--trust-domain`,
/// `--cert-lifetime`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaConfig {
    pub dir: std::path::PathBuf,
    pub trust_domain: String,
    /// Each certificate's lifetime, and the longest a caller may ask for.
    pub lifetime: Duration,
}

/// The identity `caller` may hold a certificate for in `trust_domain`: its token's
/// `identity:`, or its ServiceAccount. Also what discovery tells peers to expect of
/// the sidecar a caller runs.
pub fn identity_of(caller: &Caller, trust_domain: &str) -> Result<SpiffeId, Status> {
    let id = match caller {
        Caller::Token(grant) => match &grant.identity {
            Some(workload) => SpiffeId::local(trust_domain, workload),
            None => {
                return Err(Status::permission_denied(format!(
                    "token {:?} names no identity (`identity:` in the token file)",
                    grant.name
                )))
            }
        },
        Caller::ServiceAccount(sa) => SpiffeId::new(trust_domain, &sa.namespace, &sa.name),
        Caller::Anyone => {
            return Err(Status::failed_precondition(
                "authentication is off (--api-auth off): no caller's identity can be trusted, so no certificate is issued",
            ))
        }
    };
    id.map_err(|e| Status::permission_denied(format!("caller {caller}: {e}")))
}

/// Serves [`Ca`] to the callers `auth` lets in.
#[derive(Debug, Clone)]
pub struct CertificateService {
    ca: Arc<Ca>,
    auth: Arc<Auth>,
    trust_domain: String,
    lifetime: Duration,
}

impl CertificateService {
    pub fn new(ca: Arc<Ca>, auth: Arc<Auth>, config: &CaConfig) -> Self {
        CertificateService {
            ca,
            auth,
            trust_domain: config.trust_domain.clone(),
            lifetime: config.lifetime,
        }
    }

    /// The identity `caller` may hold a certificate for.
    fn identity_of(&self, caller: &Caller) -> Result<SpiffeId, Status> {
        identity_of(caller, &self.trust_domain)
    }

    /// The lifetime to sign for: the one asked (0: the default), never longer than
    /// the default.
    fn lifetime_for(&self, asked_seconds: u32) -> Result<Duration, Status> {
        if asked_seconds == 0 {
            return Ok(self.lifetime);
        }
        let asked = Duration::from_secs(u64::from(asked_seconds));
        if asked < MIN_LIFETIME {
            return Err(Status::invalid_argument(format!(
                "lifetime {asked:?}: at least {MIN_LIFETIME:?}"
            )));
        }
        Ok(asked.min(self.lifetime))
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> weft_api::CertificatesServer<Self> {
        weft_api::CertificatesServer::new(self)
    }
}

#[tonic::async_trait]
impl weft_api::Certificates for CertificateService {
    async fn certify(
        &self,
        request: Request<pb::CertifyRequest>,
    ) -> Result<Response<pb::CertifyResponse>, Status> {
        let peer = request.remote_addr();
        let caller = crate::grpc::caller(&self.auth, &request).await?;
        // Signing costs CPU: a caller's certificates come out of its write budget.
        self.auth
            .take_write(&caller)
            .map_err(|denial| crate::grpc::refuse(&self.auth, peer, &denial))?;
        let id = self.identity_of(&caller)?;
        let req = request.into_inner();
        let lifetime = self.lifetime_for(req.lifetime_seconds)?;
        let issued = self
            .ca
            .issue(&req.csr_pem, &id, lifetime, SystemTime::now())
            .map_err(|e| match e {
                CaError::Csr(_) | CaError::Lifetime(_) => Status::invalid_argument(e.to_string()),
                _ => {
                    tracing::error!(error = %e, "the CA failed to sign");
                    Status::internal("the CA failed to sign")
                }
            })?;
        let not_after = issued
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        tracing::info!(%caller, identity = %id, ?lifetime, "certificate issued");
        Ok(Response::new(pb::CertifyResponse {
            spiffe_id: id.to_string(),
            cert_pem: issued.cert_pem,
            trust_bundle_pem: self.ca.trust_bundle_pem().to_owned(),
            not_after_unix_seconds: not_after,
        }))
    }
}
