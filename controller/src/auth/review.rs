//! Kubernetes credentials (`--kubernetes`): a ServiceAccount token is checked with a
//! TokenReview, and a Service's annotation says which ServiceAccounts may register
//! endpoints into it.
//!
//! - **Who.** A bearer token the token file does not know is sent to the API server
//!   as a TokenReview for the audience `--token-audience` (default
//!   `weft-controller`: what the injected sidecar's projected token is issued for,
//!   so a token meant for another service is of no use here). An authenticated
//!   `system:serviceaccount:NS:NAME` is that ServiceAccount; a pod-bound token also
//!   names its pod (the `authentication.kubernetes.io/pod-name` extra), which keys
//!   the per-caller limits. Any other user is refused. Answers are cached (a good
//!   one 30 s, a refusal 5 s), so a Watch reconnect or a burst of writes costs one
//!   review, and garbage tokens cannot make the controller flood the API server.
//! - **What.** A ServiceAccount may register into the Kubernetes Services whose
//!   annotation `weft.dev/registrants` lists it: comma-separated `NAMESPACE/NAME`,
//!   or `NAME` for one in the Service's namespace. Nothing else (pods are
//!   endpoints through their EndpointSlices; the registration API is for what
//!   Kubernetes does not run, such as VMs). Every authenticated ServiceAccount may
//!   read the topology (its sidecar needs it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::Service as K8sService;

use crate::kubernetes::Cache;
use crate::model::Name;

/// The annotation on a Service naming the ServiceAccounts that may register into it.
pub const REGISTRANTS_KEY: &str = "weft.dev/registrants";
/// The audience the controller's tokens are issued for, by default.
pub const DEFAULT_AUDIENCE: &str = "weft-controller";
/// The pod a bound ServiceAccount token was issued to (TokenReview's user extra).
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

const GOOD_FOR: Duration = Duration::from_secs(30);
const REFUSED_FOR: Duration = Duration::from_secs(5);
/// Answers cached at most; the cache is emptied when full.
const CACHE_MAX: usize = 4096;

/// A Kubernetes ServiceAccount, as a TokenReview authenticated it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
    /// The pod a bound token was issued to.
    pub pod: Option<String>,
}

impl std::fmt::Display for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if let Some(pod) = &self.pod {
            write!(f, " (pod {pod})")?;
        }
        Ok(())
    }
}

/// The ServiceAccount a TokenReview's answer names, or why it names none.
pub fn identity(
    status: Option<&TokenReviewStatus>,
    audience: &str,
) -> Result<ServiceAccount, String> {
    let status = status.ok_or("the API server gave no status")?;
    if status.authenticated != Some(true) {
        return Err(match status.error.as_deref() {
            Some(e) if !e.is_empty() => format!("not authenticated: {e}"),
            _ => "not authenticated".to_owned(),
        });
    }
    // An API server that does not check audiences answers without any: such a
    // token may be one issued for something else.
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(format!("the token is not for the audience {audience:?}"));
    }
    let user = status.user.as_ref().ok_or("authenticated without a user")?;
    let username = user.username.as_deref().unwrap_or_default();
    let (namespace, name) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(|| format!("{username:?} is not a ServiceAccount"))?;
    let pod = user
        .extra
        .as_ref()
        .and_then(|extra| extra.get(POD_NAME_EXTRA))
        .and_then(|pods| pods.first())
        .cloned();
    Ok(ServiceAccount {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        pod,
    })
}

/// Answers by token digest, each good until its instant.
type ReviewCache = HashMap<[u8; 32], (Instant, Result<ServiceAccount, String>)>;

/// Checks tokens with TokenReviews, caching the answers.
#[derive(Clone)]
pub struct Reviewer {
    client: kube::Client,
    audience: String,
    cache: Arc<Mutex<ReviewCache>>,
}

impl std::fmt::Debug for Reviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reviewer")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Reviewer {
    /// Reviews with `client` for `audience`.
    pub fn new(client: kube::Client, audience: impl Into<String>) -> Self {
        Reviewer {
            client,
            audience: audience.into(),
            cache: Arc::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, ReviewCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ServiceAccount `token` belongs to, or why it is refused.
    pub async fn review(&self, token: &str) -> Result<ServiceAccount, String> {
        let key = super::tokens::digest(token);
        if let Some((until, answer)) = self.cache().get(&key) {
            if Instant::now() < *until {
                return answer.clone();
            }
        }
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let api = kube::Api::<TokenReview>::all(self.client.clone());
        let answer = match api
            .create(&kube::api::PostParams::default(), &request)
            .await
        {
            Ok(reviewed) => identity(reviewed.status.as_ref(), &self.audience),
            // Not cached: the API server may be back for the next call.
            Err(e) => return Err(format!("the TokenReview failed: {e}")),
        };
        let life = if answer.is_ok() {
            GOOD_FOR
        } else {
            REFUSED_FOR
        };
        let mut cache = self.cache();
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, (Instant::now() + life, answer.clone()));
        answer
    }
}

/// Whether `account` may register into `service`, by the Service's
/// [`REGISTRANTS_KEY`] annotation (`None`: not a Kubernetes Service).
pub fn may_register(service: &K8sService, account: &ServiceAccount) -> bool {
    let own_namespace = service.metadata.namespace.as_deref().unwrap_or("default");
    let Some(list) = service
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REGISTRANTS_KEY))
    else {
        return false;
    };
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .any(|entry| {
            let (namespace, name) = entry.split_once('/').unwrap_or((own_namespace, entry));
            namespace == account.namespace && name == account.name
        })
}

/// The Kubernetes Services as the source watches them, for the registrants rule.
#[derive(Debug, Clone)]
pub struct Registrants {
    cache: Arc<Mutex<Cache>>,
}

impl Registrants {
    /// Reads the Services in `cache`.
    pub fn new(cache: Arc<Mutex<Cache>>) -> Self {
        Registrants { cache }
    }

    /// Whether `account` may register into mesh service `service` (`NAME.NS`).
    pub fn allows(&self, service: &Name, account: &ServiceAccount) -> bool {
        let Some((name, namespace)) = service.as_str().split_once('.') else {
            return false;
        };
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .services
            .get(namespace, name)
            .is_some_and(|svc| may_register(svc, account))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn recorded(json: &str) -> TokenReview {
        serde_json::from_str(json).unwrap()
    }

    // Recorded answers, shared with the HTTP-level test (controller/tests/auth.rs).
    const AUTHENTICATED: &str = include_str!("../../tests/data/tokenreview-authenticated.json");
    const UNAUTHENTICATED: &str = include_str!("../../tests/data/tokenreview-unauthenticated.json");
    const OTHER_AUDIENCE: &str = include_str!("../../tests/data/tokenreview-no-audience.json");

    const NOT_AN_ACCOUNT: &str = r#"{
      "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
      "metadata": {},
      "spec": {"token": "x"},
      "status": {"authenticated": true, "user": {"username": "kubernetes-admin"}, "audiences": ["weft-controller"]}
    }"#;

    #[test]
    fn reads_recorded_reviews() {
        let sa = identity(recorded(AUTHENTICATED).status.as_ref(), DEFAULT_AUDIENCE).unwrap();
        assert_eq!(
            sa,
            ServiceAccount {
                namespace: "shop".into(),
                name: "vm-agent".into(),
                pod: Some("vm-agent-7c9d8".into()),
            }
        );
        let e = identity(recorded(UNAUTHENTICATED).status.as_ref(), DEFAULT_AUDIENCE).unwrap_err();
        assert!(e.contains("has expired"), "{e}");
        let e = identity(recorded(OTHER_AUDIENCE).status.as_ref(), DEFAULT_AUDIENCE).unwrap_err();
        assert!(e.contains("audience"), "{e}");
        let e = identity(recorded(NOT_AN_ACCOUNT).status.as_ref(), DEFAULT_AUDIENCE).unwrap_err();
        assert!(e.contains("not a ServiceAccount"), "{e}");
    }

    #[test]
    fn the_annotation_names_registrants() {
        let svc: K8sService = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "backend", "namespace": "shop",
                "annotations": {REGISTRANTS_KEY: "vm-agent, ops/deployer"}},
        }))
        .unwrap();
        let sa = |ns: &str, name: &str| ServiceAccount {
            namespace: ns.into(),
            name: name.into(),
            pod: None,
        };
        assert!(may_register(&svc, &sa("shop", "vm-agent")));
        assert!(may_register(&svc, &sa("ops", "deployer")));
        assert!(!may_register(&svc, &sa("ops", "vm-agent")));
        assert!(!may_register(&svc, &sa("shop", "default")));
        let bare: K8sService = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "b", "namespace": "shop"}}),
        )
        .unwrap();
        assert!(!may_register(&bare, &sa("shop", "vm-agent")));
    }
}
