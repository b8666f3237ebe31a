//! In-process: who may call the controller's APIs. A controller on loopback with a
//! token file: calls without a credential or with a bad one get 401, a valid token
//! outside its scope 403, and none of them changes `registry.json` by a byte; a
//! scoped token registers into its own service only; a rotated token file takes
//! effect without a restart; the discovery Watch refuses a caller without a token and
//! caps the Watches of one; the write rate and the registry caps answer 429 and 409.
//! Then the Kubernetes path: ServiceAccount tokens checked by TokenReviews that a
//! fake API server answers with recorded responses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use k8s_openapi::api::core::v1::Service as K8sService;
use kube::runtime::watcher::Event;
use tokio::net::TcpListener;
use weft_api::discovery::WatchRequest;
use weft_api::DiscoveryClient;
use weft_controller::auth::limits::LimitConfig;
use weft_controller::auth::review::{Registrants, Reviewer, REGISTRANTS_KEY};
use weft_controller::auth::{Auth, AuthConfig};
use weft_controller::health::{Defaults, Scope};
use weft_controller::kubernetes::Cache;
use weft_controller::registry::Caps;
use weft_controller::Options;

mod common;
use common::{request_as as call, start_in, IN_TIME};

const MESH: &str = "\
services:
  backend:
    vip: 10.96.0.10
    ports:
      - { port: 80, target_port: 8080 }
  frontend:
    vip: 10.96.0.11
    ports:
      - { port: 80 }
  backend.shop:
    vip: 10.96.0.12
    ports:
      - { port: 80 }
";

const OPERATOR: &str = "0123456789abcdef0123456789abcdef-operator";
const BACKEND: &str = "0123456789abcdef0123456789abcdef-backend1";
const READER: &str = "0123456789abcdef0123456789abcdef-reader01";
const ROTATED: &str = "0123456789abcdef0123456789abcdef-rotated1";

fn token_file(entries: &[(&str, &str, &str)]) -> String {
    let mut text = String::from("tokens:\n");
    for (name, token, register) in entries {
        text.push_str(&format!(
            "  {name}:\n    token: {token}\n    register: {register}\n"
        ));
    }
    text
}

const TOKENS: [(&str, &str, &str); 3] = [
    ("operator", OPERATOR, "[\"*\"]"),
    ("pod-b1", BACKEND, "[backend]"),
    ("dashboard", READER, "[]"),
];

fn dir_with(tokens: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("mesh.yaml"), MESH).expect("write mesh");
    std::fs::write(dir.path().join("tokens.yaml"), tokens).expect("write tokens");
    dir
}

fn with_tokens(limits: LimitConfig, caps: Caps) -> impl FnOnce(Options) -> Options {
    move |o: Options| Options {
        state_dir: Some(o.config.with_file_name("state")),
        health: Defaults {
            scope: Scope::Off,
            ..Defaults::default()
        },
        auth: AuthConfig {
            limits,
            ..AuthConfig::tokens(o.config.with_file_name("tokens.yaml"))
        },
        caps,
        ..o
    }
}

fn generous() -> LimitConfig {
    LimitConfig {
        write_rate: 1000.0,
        write_burst: NonZeroU32::new(1000).expect("non-zero"),
        ..LimitConfig::default()
    }
}

fn registry_bytes(c: &common::Running) -> Vec<u8> {
    std::fs::read(c.dir.path().join("state/registry.json")).unwrap_or_default()
}

/// The value of `weft_controller_api_denied_total{api, reason}` on `/metrics`.
async fn denied(c: &common::Running, api: &str, reason: &str) -> f64 {
    let metrics = call(c.http, None, "GET", "/metrics", "").await;
    assert_eq!(metrics.code, 200);
    let needle = format!("weft_controller_api_denied_total{{api=\"{api}\",");
    metrics
        .body
        .lines()
        .filter(|l| l.starts_with(&needle) && l.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .next()
        .unwrap_or_else(|| panic!("no {needle} reason={reason} in\n{}", metrics.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_need_a_token_in_scope_and_refusals_change_nothing() {
    let c = start_in(
        dir_with(&token_file(&TOKENS)),
        with_tokens(generous(), Caps::default()),
    )
    .await;
    let reg = "/v1/services/backend/endpoints/127.0.0.5";
    let first = call(c.http, Some(BACKEND), "PUT", reg, r#"{"port": 8080}"#).await;
    assert_eq!(first.code, 201, "{}", first.body);
    let before = registry_bytes(&c);
    assert!(!before.is_empty());

    // Refused: no credential, a bad one, another scheme, a reader, the wrong service.
    let refusals = [
        (None, "PUT", "/v1/services/backend/endpoints/127.0.0.6", 401),
        (
            Some("not-a-token-of-this-controller-at-all-0000"),
            "PUT",
            "/v1/services/backend/endpoints/127.0.0.6",
            401,
        ),
        (None, "DELETE", reg, 401),
        (
            Some(READER),
            "PUT",
            "/v1/services/backend/endpoints/127.0.0.6",
            403,
        ),
        (Some(READER), "DELETE", reg, 403),
        (
            Some(BACKEND),
            "PUT",
            "/v1/services/frontend/endpoints/127.0.0.6",
            403,
        ),
        (
            Some(BACKEND),
            "DELETE",
            "/v1/services/frontend/endpoints/127.0.0.5",
            403,
        ),
    ];
    for (token, method, path, code) in refusals {
        let a = call(c.http, token, method, path, r#"{"port": 80}"#).await;
        assert_eq!(a.code, code, "{method} {path} with {token:?}: {}", a.body);
        assert!(a.body.contains("\"error\""), "{}", a.body);
        if code == 401 {
            assert!(a.head.contains("www-authenticate: bearer"), "{}", a.head);
        }
        assert_eq!(
            registry_bytes(&c),
            before,
            "{method} {path} changed registry.json"
        );
    }
    let basic = call(c.http, None, "GET", "/v1/services", "").await;
    assert_eq!(basic.code, 401);
    // The operator may write anywhere; every token may read.
    let op = call(
        c.http,
        Some(OPERATOR),
        "PUT",
        "/v1/services/frontend/endpoints/127.0.0.7",
        "",
    )
    .await;
    assert_eq!(op.code, 201, "{}", op.body);
    for token in [OPERATOR, BACKEND, READER] {
        for path in ["/v1/services", "/v1/services/backend", "/v1/status"] {
            let a = call(c.http, Some(token), "GET", path, "").await;
            assert_eq!(a.code, 200, "GET {path}: {}", a.body);
        }
    }
    // Probes and scrapers need nothing.
    for path in ["/metrics", "/ready", "/live"] {
        assert_eq!(
            call(c.http, None, "GET", path, "").await.code,
            200,
            "{path}"
        );
    }
    let status: serde_json::Value = serde_json::from_str(
        &call(c.http, Some(READER), "GET", "/v1/status", "")
            .await
            .body,
    )
    .expect("json");
    assert_eq!(status["auth"]["required"], true);
    assert_eq!(status["auth"]["token_file"]["tokens"], 3);
    assert_eq!(denied(&c, "http", "missing_credential").await, 3.0);
    assert_eq!(denied(&c, "http", "bad_credential").await, 1.0);
    assert_eq!(denied(&c, "http", "out_of_scope").await, 4.0);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_file_takes_effect_without_a_restart() {
    let c = start_in(
        dir_with(&token_file(&TOKENS)),
        with_tokens(generous(), Caps::default()),
    )
    .await;
    let path = "/v1/services/backend/endpoints/127.0.0.8";
    assert_eq!(call(c.http, Some(ROTATED), "PUT", path, "").await.code, 401);
    // Rotate: pod-b1 gets a new token, the old one goes.
    let rotated = [TOKENS[0], ("pod-b1", ROTATED, "[backend]"), TOKENS[2]];
    common::replace(&c.dir.path().join("tokens.yaml"), &token_file(&rotated));
    // The new token works on its first use ...
    let a = call(c.http, Some(ROTATED), "PUT", path, "").await;
    assert_eq!(a.code, 201, "{}", a.body);
    // ... and the old one is refused.
    let old = call(
        c.http,
        Some(BACKEND),
        "PUT",
        "/v1/services/backend/endpoints/127.0.0.9",
        "",
    )
    .await;
    assert_eq!(old.code, 401, "{}", old.body);
    // A bad file keeps the tokens in force and says why on /v1/status.
    common::replace(
        &c.dir.path().join("tokens.yaml"),
        "tokens:\n  pod-b1:\n    token: short\n",
    );
    tokio::time::sleep(weft_controller::auth::TOKEN_FILE_POLL * 2).await;
    let status: serde_json::Value = serde_json::from_str(
        &call(c.http, Some(ROTATED), "GET", "/v1/status", "")
            .await
            .body,
    )
    .expect("json");
    let error = status["auth"]["token_file"]["current_error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("shorter than 32"), "{status}");
    assert_eq!(status["auth"]["token_file"]["current_error"]["line"], 3);
    c.stop().await;
}

async fn watch(
    grpc: SocketAddr,
    token: Option<&str>,
) -> Result<tonic::Streaming<weft_api::discovery::MeshUpdate>, tonic::Status> {
    let mut client = DiscoveryClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect grpc");
    let mut request = tonic::Request::new(WatchRequest {
        service: "frontend".into(),
        proxy_id: "test".into(),
        ..Default::default()
    });
    if let Some(t) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("ascii"),
        );
    }
    client.watch(request).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_needs_a_token_and_one_caller_holds_a_bounded_number() {
    let limits = LimitConfig {
        watches_per_caller: NonZeroU32::new(2).expect("non-zero"),
        ..generous()
    };
    let c = start_in(
        dir_with(&token_file(&TOKENS)),
        with_tokens(limits, Caps::default()),
    )
    .await;
    let e = watch(c.grpc, None)
        .await
        .expect_err("refused without a token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    let e = watch(c.grpc, Some("x".repeat(40).as_str()))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    // With a token: the snapshot, with every service.
    let mut first = watch(c.grpc, Some(READER)).await.expect("watch");
    let snapshot = tokio::time::timeout(IN_TIME, first.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("msg");
    assert!(
        snapshot.full_snapshot && snapshot.services.len() == 3,
        "{snapshot:?}"
    );
    let second = watch(c.grpc, Some(READER)).await.expect("a second watch");
    let e = watch(c.grpc, Some(READER))
        .await
        .expect_err("a third is over the cap");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    // Another caller has its own count; a closed Watch frees its slot.
    let _other = watch(c.grpc, Some(BACKEND)).await.expect("another caller");
    drop((first, second));
    let mut again = None;
    for _ in 0..50 {
        match watch(c.grpc, Some(READER)).await {
            Ok(s) => {
                again = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    assert!(
        again.is_some(),
        "the closed watches' slots were never freed"
    );
    assert_eq!(denied(&c, "grpc", "missing_credential").await, 1.0);
    assert_eq!(denied(&c, "grpc", "bad_credential").await, 1.0);
    assert!(denied(&c, "grpc", "watch_cap").await >= 1.0);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_writes_is_rate_limited_and_the_registry_capped() {
    let limits = LimitConfig {
        write_rate: 1.0,
        write_burst: NonZeroU32::new(5).expect("non-zero"),
        ..LimitConfig::default()
    };
    let caps = Caps {
        total: 1000,
        per_service: 1000,
    };
    let c = start_in(dir_with(&token_file(&TOKENS)), with_tokens(limits, caps)).await;
    let mut codes = BTreeMap::<u16, usize>::new();
    let mut retry_after = None;
    for i in 0..50 {
        let a = call(
            c.http,
            Some(BACKEND),
            "PUT",
            &format!("/v1/services/backend/endpoints/127.0.1.{i}"),
            "",
        )
        .await;
        *codes.entry(a.code).or_default() += 1;
        if a.code == 429 {
            retry_after = a
                .head
                .lines()
                .find_map(|l| l.strip_prefix("retry-after: ").map(str::to_owned));
        }
    }
    // The burst, and perhaps one more refilled while the burst ran.
    let created = codes.get(&201).copied().unwrap_or(0);
    assert!((5..=6).contains(&created), "{codes:?}");
    assert_eq!(
        codes.get(&429).copied().unwrap_or(0),
        50 - created,
        "{codes:?}"
    );
    assert_eq!(retry_after.as_deref(), Some("1"));
    // Another caller is not held back by this one's burst.
    assert_eq!(
        call(
            c.http,
            Some(OPERATOR),
            "PUT",
            "/v1/services/frontend/endpoints/127.0.2.1",
            ""
        )
        .await
        .code,
        201
    );
    assert_eq!(
        denied(&c, "http", "rate_limited").await,
        (50 - created) as f64
    );
    c.stop().await;

    let caps = Caps {
        total: 4,
        per_service: 2,
    };
    let c = start_in(
        dir_with(&token_file(&TOKENS)),
        with_tokens(generous(), caps),
    )
    .await;
    for ip in ["127.0.3.1", "127.0.3.2"] {
        assert_eq!(
            call(
                c.http,
                Some(OPERATOR),
                "PUT",
                &format!("/v1/services/backend/endpoints/{ip}"),
                ""
            )
            .await
            .code,
            201
        );
    }
    let full = call(
        c.http,
        Some(OPERATOR),
        "PUT",
        "/v1/services/backend/endpoints/127.0.3.3",
        "",
    )
    .await;
    assert_eq!(full.code, 409, "{}", full.body);
    assert!(
        full.body.contains("--max-endpoints-per-service"),
        "{}",
        full.body
    );
    // Updating one already there is not a new registration.
    assert_eq!(
        call(
            c.http,
            Some(OPERATOR),
            "PUT",
            "/v1/services/backend/endpoints/127.0.3.1",
            r#"{"weight": 3}"#
        )
        .await
        .code,
        200
    );
    for ip in ["127.0.3.4", "127.0.3.5"] {
        assert_eq!(
            call(
                c.http,
                Some(OPERATOR),
                "PUT",
                &format!("/v1/services/frontend/endpoints/{ip}"),
                ""
            )
            .await
            .code,
            201
        );
    }
    let before = registry_bytes(&c);
    let full = call(
        c.http,
        Some(OPERATOR),
        "PUT",
        "/v1/services/backend.shop/endpoints/127.0.3.6",
        "",
    )
    .await;
    assert_eq!(full.code, 409, "{}", full.body);
    assert!(full.body.contains("--max-registrations"), "{}", full.body);
    assert_eq!(registry_bytes(&c), before);
    assert_eq!(denied(&c, "http", "endpoint_cap").await, 1.0);
    assert_eq!(denied(&c, "http", "registration_cap").await, 1.0);
    c.stop().await;
}

/// A fake Kubernetes API server on loopback answering TokenReviews: the recorded
/// answer for each known token, and a count of the reviews asked.
async fn fake_api_server(
    answers: BTreeMap<&'static str, &'static str>,
) -> (SocketAddr, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let asked = Arc::new(Mutex::new(0));
    let count = asked.clone();
    let answers = Arc::new(answers);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let answers = answers.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let answers = answers.clone();
                    let count = count.clone();
                    async move {
                        assert_eq!(
                            req.uri().path(),
                            "/apis/authentication.k8s.io/v1/tokenreviews"
                        );
                        let body = req.into_body().collect().await.expect("body").to_bytes();
                        let review: serde_json::Value =
                            serde_json::from_slice(&body).expect("json");
                        assert_eq!(review["spec"]["audiences"][0], "weft-controller");
                        *count.lock().expect("count") += 1;
                        let token = review["spec"]["token"].as_str().unwrap_or_default();
                        let answer = answers
                            .get(token)
                            .copied()
                            .unwrap_or(include_str!("data/tokenreview-unauthenticated.json"));
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(201)
                                .header("content-type", "application/json")
                                .body(Full::new(bytes::Bytes::from_static(answer.as_bytes())))
                                .expect("response"),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, asked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_are_reviewed_and_scoped_by_the_service_annotation() {
    let answers = BTreeMap::from([
        (
            "sa-token-vm-agent",
            include_str!("data/tokenreview-authenticated.json"),
        ),
        (
            "sa-token-expired",
            include_str!("data/tokenreview-unauthenticated.json"),
        ),
        (
            "sa-token-web",
            include_str!("data/tokenreview-other-account.json"),
        ),
        (
            "sa-token-no-audience",
            include_str!("data/tokenreview-no-audience.json"),
        ),
    ]);
    let (api_server, asked) = fake_api_server(answers).await;
    let config = kube::Config::new(format!("http://{api_server}").parse().expect("url"));
    let client = kube::Client::try_from(config).expect("client");
    // The Services as the Kubernetes source would have watched them.
    let cache = Arc::new(Mutex::new(Cache::default()));
    let svc: K8sService = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "backend", "namespace": "shop", "annotations": {REGISTRANTS_KEY: "vm-agent"}},
        "spec": {"clusterIP": "10.96.0.12", "ports": [{"port": 80}]},
    }))
    .expect("service");
    {
        let mut c = cache.lock().expect("cache");
        c.services.apply(Event::Init);
        c.services.apply(Event::InitApply(svc));
        c.services.apply(Event::InitDone);
    }
    let dir = dir_with("tokens: {}\n");
    let tokens = dir.path().join("tokens.yaml");
    let options = Options {
        state_dir: Some(dir.path().join("state")),
        health: Defaults {
            scope: Scope::Off,
            ..Defaults::default()
        },
        ..Options::new(dir.path().join("mesh.yaml"))
    };
    let auth = Auth::new(&AuthConfig::tokens(&tokens))
        .expect("auth")
        .with_kubernetes(
            Reviewer::new(client, "weft-controller"),
            Registrants::new(cache),
        );
    let controller = weft_controller::Controller::load(&options)
        .await
        .expect("load")
        .with_auth(auth);
    let grpc_l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http_l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (grpc, http) = (
        grpc_l.local_addr().expect("addr"),
        http_l.local_addr().expect("addr"),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(controller.serve(grpc_l, http_l, async {
        let _ = stopped.await;
    }));

    let path = "/v1/services/backend.shop/endpoints/127.0.4.1";
    // The annotated ServiceAccount registers; twice costs one review (cached).
    let a = call(http, Some("sa-token-vm-agent"), "PUT", path, "").await;
    assert_eq!(a.code, 201, "{}", a.body);
    let a = call(http, Some("sa-token-vm-agent"), "PUT", path, "").await;
    assert_eq!(a.code, 200, "{}", a.body);
    assert_eq!(*asked.lock().expect("count"), 1);
    // ... into that Service only.
    let a = call(
        http,
        Some("sa-token-vm-agent"),
        "PUT",
        "/v1/services/backend/endpoints/127.0.4.1",
        "",
    )
    .await;
    assert_eq!(a.code, 403, "{}", a.body);
    // Expired: 401 with the API server's reason.
    let a = call(http, Some("sa-token-expired"), "PUT", path, "").await;
    assert_eq!(a.code, 401, "{}", a.body);
    assert!(a.body.contains("has expired"), "{}", a.body);
    // Another ServiceAccount of the namespace: authenticated, not in scope.
    let a = call(
        http,
        Some("sa-token-web"),
        "PUT",
        "/v1/services/backend.shop/endpoints/127.0.4.2",
        "",
    )
    .await;
    assert_eq!(a.code, 403, "{}", a.body);
    assert!(a.body.contains("shop/default"), "{}", a.body);
    // ... which may still read, and Watch.
    assert_eq!(
        call(http, Some("sa-token-web"), "GET", "/v1/services", "")
            .await
            .code,
        200
    );
    let mut updates = watch(grpc, Some("sa-token-web")).await.expect("watch");
    let first = tokio::time::timeout(IN_TIME, updates.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("msg");
    assert!(first.full_snapshot);
    // A token for another audience is refused.
    let a = call(
        http,
        Some("sa-token-no-audience"),
        "GET",
        "/v1/services",
        "",
    )
    .await;
    assert_eq!(a.code, 401, "{}", a.body);
    assert!(a.body.contains("audience"), "{}", a.body);
    let _ = stop.send(());
    tokio::time::timeout(IN_TIME, task)
        .await
        .expect("stops")
        .expect("task")
        .expect("serve");
}
