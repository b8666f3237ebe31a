//! The mutating admission webhook over HTTPS (`--webhook-listen`, `--webhook-cert`,
//! `--webhook-key`; 15017 in deploy/): `POST /inject` and `POST /inject/namespace`
//! take an `admission.k8s.io/v1` AdmissionReview and answer one, with a JSONPatch
//! when [`crate::inject`] says so.
//!
//! The AdmissionReview types are our own few serde structs rather than k8s-openapi's
//! (which has no admission types) or kube-core's (which would bring kube's tree for
//! four structs). The pod stays a `serde_json::Value`: the webhook must pass through
//! every field it does not touch, including ones newer than any typed model.
//!
//! Whatever is wrong with a request — not JSON, not an AdmissionReview v1, no `uid`,
//! an object other than a Pod (which it was not asked about) — is answered `400`
//! with the reason, and the server goes on serving. A pod the
//! webhook refuses (a bad exclusion annotation) gets `allowed: false` with the reason
//! as its status message, which `kubectl` shows.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::inject::{decide, Decision, InjectConfig, Via};

/// The largest AdmissionReview accepted (the API server caps requests at 3 MiB).
pub const MAX_REVIEW: usize = 4 * 1024 * 1024;
/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors setting the webhook up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{path}: {message}")]
    Pem { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The webhook: its TLS configuration and what it injects.
#[derive(Clone)]
pub struct Webhook {
    tls: TlsAcceptor,
    inject: Arc<InjectConfig>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("inject", &self.inject)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// Reads the PEM certificate chain and private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(
        cert: &Path,
        key: &Path,
        inject: InjectConfig,
    ) -> Result<Self, WebhookError> {
        let pem = |path: &Path, message: String| WebhookError::Pem {
            path: path.display().to_string(),
            message,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| pem(cert, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| pem(cert, e.to_string()))?;
        if certs.is_empty() {
            return Err(pem(cert, "no certificate in it".to_owned()));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e.to_string()))?;
        Webhook::new(certs, key, inject)
    }

    /// From a DER certificate chain and key.
    pub fn new(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        inject: InjectConfig,
    ) -> Result<Self, WebhookError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Webhook {
            tls: TlsAcceptor::from(Arc::new(config)),
            inject: Arc::new(inject),
        })
    }
}

/// `admission.k8s.io/v1` AdmissionReview, the parts read.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    pub api_version: String,
    pub kind: String,
    pub request: Option<AdmissionRequest>,
}

/// The request inside a review.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    pub uid: String,
    pub kind: Option<GroupVersionKind>,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub operation: String,
    #[serde(default)]
    pub object: Value,
    #[serde(default)]
    pub dry_run: bool,
}

/// A kind with its group and version.
#[derive(Debug, Deserialize)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    pub kind: String,
}

/// The response inside the answering review.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AdmissionResponse {
    uid: String,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Value>,
}

/// The answer to a review body: `Ok` a response review, `Err` a 400's reason.
pub fn review(body: &[u8], via: Via, config: &InjectConfig) -> Result<Value, String> {
    let review: AdmissionReview =
        serde_json::from_slice(body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
    if review.api_version != "admission.k8s.io/v1" || review.kind != "AdmissionReview" {
        return Err(format!(
            "expected apiVersion admission.k8s.io/v1, kind AdmissionReview; got {} {}",
            review.api_version, review.kind
        ));
    }
    let request = review
        .request
        .ok_or_else(|| "the AdmissionReview has no request".to_owned())?;
    if request.uid.is_empty() {
        return Err("the request has no uid".to_owned());
    }
    let is_pod = request
        .kind
        .as_ref()
        .is_some_and(|k| k.group.is_empty() && k.version == "v1" && k.kind == "Pod");
    if !is_pod {
        // The webhook is registered for Pods only: anything else was sent by a
        // misconfigured webhook configuration, and is refused rather than waved
        // through unseen (failurePolicy Ignore still admits it; the API server logs
        // the refusal).
        let kind = request.kind.as_ref().map_or_else(
            || "an object without a kind".to_owned(),
            |k| format!("{}/{} {}", k.group, k.version, k.kind),
        );
        return Err(format!("this webhook admits Pods only, not {kind}"));
    }
    let decision = if request.operation != "CREATE" {
        Decision::Skip("not a creation")
    } else if !request.object.is_object() {
        return Err("the request's object is not a pod".to_owned());
    } else {
        decide(&request.object, &request.namespace, via, config)
    };
    let name = request
        .object
        .pointer("/metadata/name")
        .or_else(|| request.object.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut response = AdmissionResponse {
        uid: request.uid.clone(),
        allowed: true,
        patch_type: None,
        patch: None,
        status: None,
    };
    match decision {
        Decision::Skip(why) => {
            tracing::debug!(namespace = %request.namespace, pod = name, "not injected: {why}");
        }
        Decision::Deny(reason) => {
            tracing::info!(namespace = %request.namespace, pod = name, %reason, "pod refused");
            response.allowed = false;
            response.status = Some(json!({ "code": 400, "message": format!("weft: {reason}") }));
        }
        Decision::Patch(ops) => {
            tracing::info!(
                namespace = %request.namespace, pod = name, dry_run = request.dry_run,
                "injecting the sidecar"
            );
            let patch = serde_json::to_vec(&ops).map_err(|e| e.to_string())?;
            response.patch_type = Some("JSONPatch");
            response.patch = Some(base64::engine::general_purpose::STANDARD.encode(patch));
        }
    }
    Ok(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
}

fn reply(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

async fn handle(req: Request<Incoming>, config: &InjectConfig) -> Response<Full<Bytes>> {
    let via = match req.uri().path() {
        "/inject" => Via::Pod,
        "/inject/namespace" => Via::Namespace,
        "/ready" | "/live" if req.method() == Method::GET => {
            return reply(StatusCode::OK, "text/plain", b"ok\n".to_vec())
        }
        _ => return reply(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
    };
    if req.method() != Method::POST {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            b"POST an AdmissionReview\n".to_vec(),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_REVIEW).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                "text/plain",
                format!("reading the body: {e}\n").into_bytes(),
            )
        }
    };
    match review(&body, via, config) {
        Ok(answer) => match serde_json::to_vec(&answer) {
            Ok(bytes) => reply(StatusCode::OK, "application/json", bytes),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                e.to_string().into_bytes(),
            ),
        },
        Err(reason) => {
            tracing::warn!(%reason, "malformed admission review");
            reply(
                StatusCode::BAD_REQUEST,
                "text/plain",
                format!("{reason}\n").into_bytes(),
            )
        }
    }
}

/// Serves the webhook on `listener` until `shutdown` resolves. A connection that
/// fails its handshake or sends garbage affects only itself.
pub async fn serve(listener: TcpListener, webhook: Webhook, shutdown: impl Future<Output = ()>) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admission webhook serving (HTTPS)");
    }
    let Webhook { tls, inject } = webhook;
    let accept = move |stream: TcpStream, peer: SocketAddr| {
        let tls = tls.clone();
        async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(tls)) => Some(tls),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "webhook TLS handshake");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, "webhook TLS handshake timed out");
                    None
                }
            }
        }
    };
    let handler = move |req: Request<Incoming>| {
        let config = inject.clone();
        async move { handle(req, &config).await }
    };
    weft_runtime::http::serve_with(listener, accept, handler, shutdown).await
}
