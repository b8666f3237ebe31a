//! The `AggregatedDiscoveryService` (xDS v3, state of the world) on the
//! controller's gRPC port, beside `Discovery`: each stream is a [`Session`] fed
//! with the client's requests and with every new served mesh, the same change
//! notifications the `Watch` streams follow (ARCHITECTURE.md, xDS for proxyless
//! gRPC).
//!
//! Who may open one: the same callers as `Watch`, with the same credential. A
//! client that can send call credentials puts `authorization: Bearer TOKEN` in
//! its metadata; one that cannot (gRPC's xDS client sends none over a plaintext
//! channel) puts the token in its bootstrap's `node.metadata` under
//! [`TOKEN_METADATA_KEY`], which arrives in the stream's first request. Without
//! either a stream ends `UNAUTHENTICATED` before any resource is sent (unless
//! `--api-auth off`). ADS streams count against `--max-watches-per-caller`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::value::Kind as ValueKind;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::session::{At, Heard, Session};
use super::stats::Stats;
use crate::auth::Auth;
use crate::state::{Snapshot, State};

/// The `node.metadata` key a client without call credentials puts its token under.
pub const TOKEN_METADATA_KEY: &str = "weft.dev/token";

/// A stream's first request must come within this.
const FIRST_REQUEST_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// The ADS service over the controller's [`State`].
#[derive(Debug, Clone)]
pub struct AdsService {
    state: Arc<State>,
    auth: Arc<Auth>,
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl AdsService {
    /// Serves `state` to the callers `auth` lets in.
    pub fn new(state: Arc<State>, auth: Arc<Auth>) -> Self {
        AdsService { state, auth }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
    }
}

/// The token in a request's `node.metadata`, if any.
fn node_token(req: &DiscoveryRequest) -> Option<String> {
    let fields = &req.node.as_ref()?.metadata.as_ref()?.fields;
    match fields.get(TOKEN_METADATA_KEY)?.kind.as_ref()? {
        ValueKind::StringValue(token) => Some(token.clone()),
        _ => None,
    }
}

/// `<epoch>.<version>`: a snapshot's `version_info`.
fn version_of(snap: &Snapshot, epoch: u64) -> String {
    format!("{epoch}.{}", snap.version)
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let peer = request.remote_addr();
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes().to_vec());
        let mut requests = request.into_inner();
        let first = tokio::time::timeout(FIRST_REQUEST_WITHIN, requests.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no discovery request within 10 s"))??
            .ok_or_else(|| Status::invalid_argument("the stream ended before its first request"))?;
        let credential =
            header.or_else(|| node_token(&first).map(|t| format!("Bearer {t}").into_bytes()));
        let caller = self
            .auth
            .authenticate(credential.as_deref())
            .await
            .map_err(|denial| crate::grpc::refuse(&self.auth, peer, &denial))?;
        let slot = self
            .auth
            .open_watch(&caller)
            .map_err(|denial| crate::grpc::refuse(&self.auth, peer, &denial))?;
        let node = first
            .node
            .as_ref()
            .map(|n| n.id.clone())
            .unwrap_or_default();
        tracing::info!(%node, ?peer, %caller, "ADS stream opened");
        let (tx, rx) = mpsc::channel(4);
        let stream = AdsStream {
            state: self.state.clone(),
            stats: self.state.xds().clone(),
            node,
            peer,
            tx,
        };
        tokio::spawn(async move {
            let _slot = slot;
            stream.run(first, requests).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "weft serves state-of-the-world ADS only (StreamAggregatedResources)",
        ))
    }
}

/// One open ADS stream's task.
struct AdsStream {
    state: Arc<State>,
    stats: Arc<Stats>,
    node: String,
    peer: Option<SocketAddr>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

impl AdsStream {
    /// Answers `first` and the requests after it, and pushes every new mesh, until
    /// either side ends the stream or the controller closes.
    async fn run(self, first: DiscoveryRequest, mut requests: Streaming<DiscoveryRequest>) {
        let _open = self.stats.open();
        let mut updates = self.state.subscribe();
        let closed = self.state.closed();
        tokio::pin!(closed);
        let epoch = self.state.epoch();
        let mut session = Session::default();
        let mut next = Some(first);
        loop {
            if let Some(req) = next.take() {
                let snap = updates.borrow_and_update().clone();
                let version = version_of(&snap, epoch);
                let outcome = session.on_request(
                    &req,
                    At {
                        mesh: &snap.mesh,
                        version: &version,
                    },
                );
                self.heard(&outcome.heard);
                if let Some(response) = outcome.response {
                    if !self.send(response).await {
                        break;
                    }
                }
            }
            tokio::select! {
                _ = self.tx.closed() => break,
                _ = &mut closed => break,
                changed = updates.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let snap = updates.borrow_and_update().clone();
                    let version = version_of(&snap, epoch);
                    let mut gone = false;
                    for response in session.on_mesh(At { mesh: &snap.mesh, version: &version }) {
                        if !self.send(response).await {
                            gone = true;
                            break;
                        }
                    }
                    if gone {
                        break;
                    }
                }
                got = requests.message() => match got {
                    Ok(Some(req)) => next = Some(req),
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(node = %self.node, %status, "ADS stream broke");
                        break;
                    }
                },
            }
        }
        tracing::info!(node = %self.node, peer = ?self.peer, "ADS stream closed");
    }

    /// Sends `response`, counted; `false` when the client is gone.
    async fn send(&self, response: DiscoveryResponse) -> bool {
        let kind = super::resources::Kind::of_type_url(&response.type_url);
        tracing::debug!(node = %self.node, type_url = %response.type_url, version = %response.version_info, nonce = %response.nonce, resources = response.resources.len(), "ADS push");
        if self.tx.send(Ok(response)).await.is_err() {
            return false;
        }
        if let Some(kind) = kind {
            self.stats.pushed(kind);
        }
        true
    }

    /// Counts and logs what a request was.
    fn heard(&self, heard: &Heard) {
        match heard {
            Heard::Subscribe(_) | Heard::Stale(_) => {}
            Heard::Ack { kind, .. } => self.stats.acked(*kind),
            Heard::Nack {
                kind,
                version,
                reason,
            } => {
                tracing::warn!(node = %self.node, peer = ?self.peer, r#type = kind.label(), %version, %reason, "an xDS client rejected a response (NACK); it keeps its last good state");
                self.stats.nacked(&self.node, *kind, version, reason);
            }
            Heard::Unknown(url) => {
                tracing::debug!(node = %self.node, type_url = %url, "ADS request for a type weft does not serve");
            }
        }
    }
}
