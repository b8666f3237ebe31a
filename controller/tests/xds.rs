//! In-process: the controller's ADS (xDS v3, state of the world) with a real tonic
//! client speaking as gRPC's xDS client does: Listener, then Cluster, then
//! endpoints, each ACKed; an edit of the mesh file pushes the new endpoints and
//! nothing else; a NACK is counted and shown with its reason, and the stream goes
//! on; callers without a credential get nothing.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Node};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{value, Struct, Value};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use weft_controller::auth::AuthConfig;
use weft_controller::health::{Defaults, Scope};
use weft_controller::Options;

mod common;
use common::{get, replace, request_as, start_in, Running, IN_TIME};

const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const CLUSTER: &str = "outbound|80||backend";

const TOKEN: &str = "0123456789abcdef0123456789abcdef-reader";
const TOKENS: &str =
    "tokens:\n  reader:\n    token: 0123456789abcdef0123456789abcdef-reader\n    register: []\n";

fn mesh(endpoints: &str) -> String {
    format!(
        "services:\n  backend:\n    vip: 10.96.0.10\n    ports: [{{ port: 80, target_port: 50051 }}]\n    endpoints: [{endpoints}]\n"
    )
}

async fn controller() -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("mesh.yaml"), mesh("10.211.0.2, 10.211.0.3")).expect("mesh");
    std::fs::write(dir.path().join("tokens.yaml"), TOKENS).expect("tokens");
    start_in(dir, |o: Options| Options {
        health: Defaults {
            scope: Scope::Off,
            ..Defaults::default()
        },
        auth: AuthConfig::tokens(o.config.with_file_name("tokens.yaml")),
        ..o
    })
    .await
}

/// A node as a gRPC client's bootstrap makes it, with `token` in its metadata.
fn node(token: Option<&str>) -> Node {
    let fields: HashMap<String, Value> = token
        .map(|t| {
            (
                "weft.dev/token".to_owned(),
                Value {
                    kind: Some(value::Kind::StringValue(t.to_owned())),
                },
            )
        })
        .into_iter()
        .collect();
    Node {
        id: "test-client".into(),
        metadata: Some(Struct { fields }),
        ..Default::default()
    }
}

/// An open ADS stream: what to send, and what came back.
struct Ads {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

impl Ads {
    async fn open(
        running: &Running,
        first: DiscoveryRequest,
        header: Option<&str>,
    ) -> Result<Ads, tonic::Status> {
        let mut client =
            AggregatedDiscoveryServiceClient::connect(format!("http://{}", running.grpc))
                .await
                .expect("connect");
        let (tx, rx) = mpsc::channel(8);
        tx.send(first).await.expect("queue");
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = header {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("header"),
            );
        }
        let rx = client
            .stream_aggregated_resources(request)
            .await?
            .into_inner();
        Ok(Ads { tx, rx })
    }

    async fn send(&self, req: DiscoveryRequest) {
        self.tx.send(req).await.expect("send");
    }

    async fn next(&mut self) -> Result<DiscoveryResponse, tonic::Status> {
        tokio::time::timeout(IN_TIME, self.rx.message())
            .await
            .expect("a response in time")?
            .ok_or_else(|| tonic::Status::unknown("stream ended"))
    }

    /// Nothing arrives within a short while.
    async fn quiet(&mut self) {
        if let Ok(got) = tokio::time::timeout(Duration::from_millis(300), self.rx.message()).await {
            panic!("expected nothing, got {got:?}");
        }
    }
}

/// `/v1/status` (read with the test's token).
async fn status(running: &Running) -> serde_json::Value {
    let answer = request_as(running.http, Some(TOKEN), "GET", "/v1/status", "").await;
    assert_eq!(answer.code, 200, "{}", answer.body);
    serde_json::from_str(&answer.body).expect("json")
}

fn req(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn ack(r: &DiscoveryResponse, names: &[&str]) -> DiscoveryRequest {
    req(&r.type_url, names, &r.version_info, &r.nonce)
}

fn endpoints(r: &DiscoveryResponse) -> Vec<String> {
    assert_eq!(r.type_url, EDS);
    let cla = ClusterLoadAssignment::decode(r.resources[0].value.as_slice()).expect("cla");
    cla.endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .map(|e| {
            let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                panic!("no endpoint")
            };
            let Some(address::Address::SocketAddress(sa)) =
                &ep.address.as_ref().expect("address").address
            else {
                panic!("no socket address")
            };
            let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
                panic!("no port")
            };
            format!("{}:{port}", sa.address)
        })
        .collect()
}

#[tokio::test]
async fn a_grpc_client_follows_the_mesh_through_ads() {
    let running = controller().await;
    let mut first = req(LDS, &["backend"], "", "");
    first.node = Some(node(Some(TOKEN)));
    let mut ads = Ads::open(&running, first, None).await.expect("authorized");

    let lds = ads.next().await.expect("LDS");
    assert_eq!(lds.type_url, LDS);
    let listener = Listener::decode(lds.resources[0].value.as_slice()).expect("listener");
    assert_eq!(listener.name, "backend");
    ads.send(ack(&lds, &["backend"])).await;
    ads.send(req(CDS, &[CLUSTER], "", "")).await;
    let cds = ads.next().await.expect("CDS");
    assert_eq!(cds.type_url, CDS);
    assert_eq!(
        Cluster::decode(cds.resources[0].value.as_slice())
            .expect("cluster")
            .name,
        CLUSTER
    );
    ads.send(ack(&cds, &[CLUSTER])).await;
    ads.send(req(EDS, &[CLUSTER], "", "")).await;
    let eds = ads.next().await.expect("EDS");
    assert_eq!(endpoints(&eds), ["10.211.0.2:50051", "10.211.0.3:50051"]);
    ads.send(ack(&eds, &[CLUSTER])).await;
    ads.quiet().await;

    // An endpoint leaves the mesh file: only the assignment is pushed.
    replace(&running.path, &mesh("10.211.0.2"));
    let pushed = ads.next().await.expect("push");
    assert_eq!(endpoints(&pushed), ["10.211.0.2:50051"]);
    assert_ne!(pushed.version_info, eds.version_info);
    assert_ne!(pushed.nonce, eds.nonce);

    // The client rejects it: counted, shown with its reason, and the stream goes on.
    let mut nack = ack(&pushed, &[CLUSTER]);
    nack.version_info = eds.version_info.clone();
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "test: endpoints rejected".into(),
        details: vec![],
    });
    ads.send(nack).await;
    ads.quiet().await;
    let status = status(&running).await;
    let xds = &status["xds"];
    assert_eq!(xds["streams"], 1, "{xds}");
    assert_eq!(xds["nacks"]["endpoints"], 1, "{xds}");
    assert_eq!(xds["acks"]["listener"], 1, "{xds}");
    assert_eq!(xds["pushes"]["endpoints"], 2, "{xds}");
    assert_eq!(xds["pushes"]["listener"], 1, "{xds}");
    assert_eq!(
        xds["last_nack"]["reason"], "test: endpoints rejected",
        "{xds}"
    );
    assert_eq!(xds["last_nack"]["node"], "test-client", "{xds}");
    let (_, metrics) = get(running.http, "/metrics").await;
    for line in [
        "weft_controller_xds_streams 1",
        "weft_controller_xds_pushes_total{type=\"endpoints\"} 2",
        "weft_controller_xds_acks_total{result=\"rejected\",type=\"endpoints\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(line)),
            "no {line:?} in\n{metrics}"
        );
    }

    // The next change is pushed still.
    replace(&running.path, &mesh("10.211.0.2, 10.211.0.4"));
    let pushed = ads.next().await.expect("push after NACK");
    assert_eq!(endpoints(&pushed), ["10.211.0.2:50051", "10.211.0.4:50051"]);

    drop(ads);
    running.stop().await;
}

#[tokio::test]
async fn a_missing_listener_is_answered_empty() {
    let running = controller().await;
    let mut ads = Ads::open(&running, req(LDS, &["nobody"], "", ""), Some(TOKEN))
        .await
        .expect("a token in the header works too");
    let lds = ads.next().await.expect("LDS");
    assert!(lds.resources.is_empty(), "does not exist: {lds:?}");
    running.stop().await;
}

#[tokio::test]
async fn ads_needs_a_credential() {
    let running = controller().await;
    let refused = |r: Result<DiscoveryResponse, tonic::Status>| match r {
        Err(status) => status.code(),
        Ok(r) => panic!("answered without a valid credential: {r:?}"),
    };
    let mut first = req(LDS, &["backend"], "", "");
    first.node = Some(node(None));
    let got = match Ads::open(&running, first.clone(), None).await {
        Err(status) => status.code(),
        Ok(mut ads) => refused(ads.next().await),
    };
    assert_eq!(got, Code::Unauthenticated);
    first.node = Some(node(Some("not-a-token-not-a-token-not-a-token")));
    let got = match Ads::open(&running, first, None).await {
        Err(status) => status.code(),
        Ok(mut ads) => refused(ads.next().await),
    };
    assert_eq!(got, Code::Unauthenticated);
    let status = status(&running).await;
    assert_eq!(status["xds"]["streams_total"], 0);
    running.stop().await;
}
