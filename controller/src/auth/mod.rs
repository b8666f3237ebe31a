//! Who may call the controller's APIs, and how much.
//!
//! | call | credential | scope |
//! | --- | --- | --- |
//! | `PUT`/`DELETE /v1/services/{service}/endpoints/{address}` | bearer token | the token's `register` services (token file), or the Service's `weft.dev/registrants` (Kubernetes) |
//! | `GET /v1/services[/...]`, `GET /v1/status`, discovery `Watch` and `Drain` | bearer token | any valid one |
//! | `GET /metrics`, `/ready`, `/live` | none | probes and scrapers |
//!
//! Credentials ([`Auth::authenticate`]): a token from the token file
//! (`--api-tokens`, [`tokens`]), else, with `--kubernetes`, a ServiceAccount token
//! checked with a TokenReview ([`review`]). Missing or bad: `401` (gRPC
//! `UNAUTHENTICATED`); valid but out of scope: `403`. Writes are rate-limited per
//! caller (`429` with `Retry-After`) and Watches capped per caller (gRPC
//! `RESOURCE_EXHAUSTED`) ([`limits`]). Every refusal changes nothing, is counted in
//! `weft_controller_api_denied_total{api, reason}` and logged with the caller's
//! address. `--api-auth off` lets everyone do everything (a lab, never a cluster).

pub mod limits;
pub mod review;
pub mod tokens;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::ConfigError;
use crate::model::Name;
use limits::{LimitConfig, WatchSlot, Watches, WriteRate};
use review::{Registrants, Reviewer, ServiceAccount};
use tokens::{Grant, TokenFile, TokenFileStatus};

/// How often the token file is checked for changes (besides on an unknown token).
pub const TOKEN_FILE_POLL: Duration = Duration::from_secs(1);

/// Which API a call came in on (a label of the denial counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Api {
    Http,
    Grpc,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Http => "http",
            Api::Grpc => "grpc",
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A token of the token file.
    Token(Arc<Grant>),
    /// A Kubernetes ServiceAccount, by TokenReview.
    ServiceAccount(ServiceAccount),
    /// Anyone: authentication is off.
    Anyone,
}

impl Caller {
    /// The key its limits are counted under.
    pub fn key(&self) -> String {
        match self {
            Caller::Token(g) => format!("token:{}", g.name),
            Caller::ServiceAccount(sa) => match &sa.pod {
                Some(pod) => format!("sa:{}/{}/{pod}", sa.namespace, sa.name),
                None => format!("sa:{}/{}", sa.namespace, sa.name),
            },
            Caller::Anyone => "anyone".to_owned(),
        }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Token(g) => write!(f, "token {:?}", g.name),
            Caller::ServiceAccount(sa) => write!(f, "ServiceAccount {sa}"),
            Caller::Anyone => f.write_str("anyone (--api-auth off)"),
        }
    }
}

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No `Authorization: Bearer` credential.
    Missing,
    /// A credential that is not valid, and why.
    Bad(String),
    /// A valid caller writing into a service outside its scope.
    OutOfScope { caller: String, service: Name },
    /// Too many writes: the next is allowed after this long.
    RateLimited(Duration),
    /// Too many Watches open by one caller.
    WatchCap { caller: String, open: u32 },
    /// A registry cap (`--max-endpoints-per-service`, `--max-registrations`).
    Cap {
        reason: &'static str,
        message: String,
    },
}

impl Denial {
    /// The `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::Missing => "missing_credential",
            Denial::Bad(_) => "bad_credential",
            Denial::OutOfScope { .. } => "out_of_scope",
            Denial::RateLimited(_) => "rate_limited",
            Denial::WatchCap { .. } => "watch_cap",
            Denial::Cap { reason, .. } => reason,
        }
    }

    /// What the caller is told.
    pub fn message(&self) -> String {
        match self {
            Denial::Missing => {
                "no credential: send `Authorization: Bearer TOKEN` (a token of --api-tokens, or a ServiceAccount token with --kubernetes)".to_owned()
            }
            Denial::Bad(why) => format!("bad credential: {why}"),
            Denial::OutOfScope { caller, service } => {
                format!("{caller} may not register into service {service}")
            }
            Denial::RateLimited(wait) => format!(
                "too many writes: retry after {} ms (--api-write-rate)",
                wait.as_millis()
            ),
            Denial::WatchCap { caller, open } => format!(
                "{caller} already holds {open} discovery watches (--max-watches-per-caller)"
            ),
            Denial::Cap { message, .. } => message.clone(),
        }
    }
}

/// Reasons counted from the start (at zero), so their series exist before the
/// first refusal.
const COUNTED: [(Api, &str); 9] = [
    (Api::Http, "missing_credential"),
    (Api::Http, "bad_credential"),
    (Api::Http, "out_of_scope"),
    (Api::Http, "rate_limited"),
    (Api::Http, "endpoint_cap"),
    (Api::Http, "registration_cap"),
    (Api::Grpc, "missing_credential"),
    (Api::Grpc, "bad_credential"),
    (Api::Grpc, "watch_cap"),
];

/// What authentication is started with.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `false`: `--api-auth off`, everyone may do everything.
    pub required: bool,
    /// The token file.
    pub tokens: Option<PathBuf>,
    /// The audience ServiceAccount tokens must be issued for (with Kubernetes).
    pub audience: String,
    pub limits: LimitConfig,
}

impl AuthConfig {
    /// Authentication off (tests and embedding; the command line never defaults to it).
    pub fn off() -> Self {
        AuthConfig {
            required: false,
            tokens: None,
            audience: review::DEFAULT_AUDIENCE.to_owned(),
            limits: LimitConfig::default(),
        }
    }

    /// Tokens from `path`, required.
    pub fn tokens(path: impl Into<PathBuf>) -> Self {
        AuthConfig {
            required: true,
            tokens: Some(path.into()),
            ..AuthConfig::off()
        }
    }
}

/// `/v1/status`'s `auth`.
#[derive(Debug, Clone, Serialize)]
pub struct AuthStatus {
    pub required: bool,
    pub token_file: Option<TokenFileStatus>,
    pub kubernetes: bool,
    /// Callers with a discovery Watch open.
    pub watching_callers: usize,
}

/// Authentication, scopes and limits.
#[derive(Debug)]
pub struct Auth {
    required: bool,
    tokens: Option<TokenFile>,
    kubernetes: Option<(Reviewer, Registrants)>,
    write_rate: WriteRate,
    watches: Arc<Watches>,
    limits: LimitConfig,
    denied: Mutex<BTreeMap<(Api, &'static str), u64>>,
}

impl Auth {
    /// From `config`; reads the token file (a missing or bad one is an error).
    pub fn new(config: &AuthConfig) -> Result<Self, ConfigError> {
        let tokens = config.tokens.as_ref().map(TokenFile::open).transpose()?;
        Ok(Auth {
            required: config.required,
            tokens,
            kubernetes: None,
            write_rate: WriteRate::new(config.limits.write_rate, config.limits.write_burst),
            watches: Arc::default(),
            limits: config.limits,
            denied: Mutex::new(COUNTED.iter().map(|k| (*k, 0)).collect()),
        })
    }

    /// Also accepts ServiceAccount tokens, scoped by the Services' annotations.
    pub fn with_kubernetes(mut self, reviewer: Reviewer, registrants: Registrants) -> Self {
        self.kubernetes = Some((reviewer, registrants));
        self
    }

    /// Whether anything can authenticate: required auth with no credential source
    /// would refuse everyone.
    pub fn has_source(&self) -> bool {
        !self.required || self.tokens.is_some() || self.kubernetes.is_some()
    }

    /// The caller an `Authorization` header value names.
    pub async fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Caller, Denial> {
        if !self.required {
            return Ok(Caller::Anyone);
        }
        let value = authorization.ok_or(Denial::Missing)?;
        let token = bearer(value)
            .ok_or_else(|| Denial::Bad("expected `Authorization: Bearer TOKEN`".to_owned()))?;
        if let Some(grant) = self.tokens.as_ref().and_then(|t| t.lookup(token)) {
            return Ok(Caller::Token(grant));
        }
        match &self.kubernetes {
            Some((reviewer, _)) => reviewer
                .review(token)
                .await
                .map(Caller::ServiceAccount)
                .map_err(Denial::Bad),
            None => Err(Denial::Bad("unknown token".to_owned())),
        }
    }

    /// Whether `caller` may register into (or deregister from) `service`.
    pub fn may_register(&self, caller: &Caller, service: &Name) -> Result<(), Denial> {
        let allowed = match caller {
            Caller::Anyone => true,
            Caller::Token(grant) => grant.register.allows(service),
            Caller::ServiceAccount(sa) => self
                .kubernetes
                .as_ref()
                .is_some_and(|(_, registrants)| registrants.allows(service, sa)),
        };
        if allowed {
            Ok(())
        } else {
            Err(Denial::OutOfScope {
                caller: caller.to_string(),
                service: service.clone(),
            })
        }
    }

    /// Takes one write from `caller`'s rate. (With authentication off there is no
    /// caller to hold to one: nothing is limited.)
    pub fn take_write(&self, caller: &Caller) -> Result<(), Denial> {
        if *caller == Caller::Anyone {
            return Ok(());
        }
        self.write_rate
            .take(&caller.key(), Instant::now())
            .map_err(Denial::RateLimited)
    }

    /// Counts one Watch of `caller` while the slot lives (unlimited with
    /// authentication off, like writes).
    pub fn open_watch(&self, caller: &Caller) -> Result<Option<WatchSlot>, Denial> {
        if *caller == Caller::Anyone {
            return Ok(None);
        }
        self.watches
            .open(&caller.key(), self.limits.watches_per_caller)
            .map(Some)
            .map_err(|open| Denial::WatchCap {
                caller: caller.to_string(),
                open,
            })
    }

    /// Counts and logs a refusal of a call from `peer`.
    pub fn denied(&self, api: Api, peer: Option<SocketAddr>, denial: &Denial) {
        *self
            .denied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((api, denial.reason()))
            .or_insert(0) += 1;
        let (api, reason, why) = (api.as_str(), denial.reason(), denial.message());
        match denial {
            Denial::Missing | Denial::Bad(_) | Denial::OutOfScope { .. } => {
                tracing::warn!(?peer, api, reason, "API call refused: {why}")
            }
            Denial::RateLimited(_) => {
                tracing::debug!(?peer, api, reason, "API call refused: {why}")
            }
            Denial::WatchCap { .. } | Denial::Cap { .. } => {
                tracing::info!(?peer, api, reason, "API call refused: {why}")
            }
        }
    }

    /// Refusals so far, by API and reason.
    pub fn denied_counts(&self) -> Vec<(Api, &'static str, u64)> {
        self.denied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((api, reason), n)| (*api, *reason, *n))
            .collect()
    }

    /// For `/v1/status`.
    pub fn status(&self) -> AuthStatus {
        AuthStatus {
            required: self.required,
            token_file: self.tokens.as_ref().map(TokenFile::status),
            kubernetes: self.kubernetes.is_some(),
            watching_callers: self.watches.callers(),
        }
    }

    /// Follows the token file until `closed` resolves.
    pub async fn follow_token_file(self: Arc<Self>, closed: impl std::future::Future<Output = ()>) {
        if self.tokens.is_none() {
            return;
        }
        tokio::pin!(closed);
        loop {
            tokio::select! {
                () = &mut closed => return,
                () = tokio::time::sleep(TOKEN_FILE_POLL) => {}
            }
            let auth = self.clone();
            // A stat (and rarely a small read): off the runtime's threads.
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(t) = &auth.tokens {
                    t.refresh();
                }
            })
            .await;
        }
    }
}

/// The token of an `Authorization: Bearer TOKEN` value.
fn bearer(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bearer_values() {
        assert_eq!(bearer(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(&[0xff, 0x20, 0x41]), None);
    }

    #[tokio::test]
    async fn tokens_scope_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        let (op, b1) = ("o".repeat(40), "b".repeat(40));
        std::fs::write(
            &path,
            format!("tokens:\n  operator:\n    token: {op}\n    register: [\"*\"]\n  pod-b1:\n    token: {b1}\n    register: [backend]\n"),
        )
        .unwrap();
        let auth = Auth::new(&AuthConfig::tokens(&path)).unwrap();
        let header = |t: &str| format!("Bearer {t}").into_bytes();
        assert_eq!(auth.authenticate(None).await, Err(Denial::Missing));
        assert!(matches!(
            auth.authenticate(Some(&header(&"x".repeat(40)))).await,
            Err(Denial::Bad(_))
        ));
        let backend = Name::try_from("backend").unwrap();
        let frontend = Name::try_from("frontend").unwrap();
        let operator = auth.authenticate(Some(&header(&op))).await.unwrap();
        assert!(auth.may_register(&operator, &frontend).is_ok());
        let pod = auth.authenticate(Some(&header(&b1))).await.unwrap();
        assert_eq!(pod.key(), "token:pod-b1");
        assert!(auth.may_register(&pod, &backend).is_ok());
        let denial = auth.may_register(&pod, &frontend).unwrap_err();
        assert_eq!(denial.reason(), "out_of_scope");
        auth.denied(Api::Http, None, &denial);
        let counted = auth.denied_counts();
        assert!(
            counted.contains(&(Api::Http, "out_of_scope", 1)),
            "{counted:?}"
        );
        assert!(
            counted.contains(&(Api::Grpc, "watch_cap", 0)),
            "{counted:?}"
        );
    }

    #[tokio::test]
    async fn off_lets_anyone_in() {
        let auth = Auth::new(&AuthConfig::off()).unwrap();
        assert_eq!(auth.authenticate(None).await, Ok(Caller::Anyone));
        assert!(auth
            .may_register(&Caller::Anyone, &Name::try_from("x").unwrap())
            .is_ok());
    }
}
