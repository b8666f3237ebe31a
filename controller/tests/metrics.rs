//! In-process: the controller's `/metrics` on its HTTP port follows what it does —
//! the first load and a good reload counted as `ok`, a rejected edit as `error`, the
//! served version, services and endpoints per service, a subscribed proxy and the
//! updates pushed to it.

use std::time::Duration;

use weft_api::discovery::WatchRequest;
use weft_api::DiscoveryClient;

mod common;
use common::{get, replace, start, IN_TIME};

const V1: &str = "\
services:
  backend:
    vip: 10.96.0.10
    ports: [{ port: 80, target_port: 8080 }]
    endpoints: [10.211.0.3, 10.211.0.4]
  frontend:
    vip: 10.96.0.20
    ports: [{ port: 80 }]
";

/// backend gains an endpoint, frontend is gone.
const V2: &str = "\
services:
  backend:
    vip: 10.96.0.10
    ports: [{ port: 80, target_port: 8080 }]
    endpoints: [10.211.0.3, 10.211.0.4, 10.211.0.5]
";

const BAD: &str = "services:\n  backend: { vip: not-an-ip, ports: [{ port: 80 }] }\n";

/// The value of the sample `name{labels}` (labels: a subset, e.g. `result="ok"`) in
/// the Prometheus text `page`.
fn sample(page: &str, name: &str, labels: &[&str]) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Scrapes `/metrics` until `name{labels}` is `want` (metrics follow the reload loop,
/// which polls the file) or [`IN_TIME`] passes; returns the last page either way.
async fn scrape_until(
    http: std::net::SocketAddr,
    name: &str,
    labels: &[&str],
    want: f64,
) -> String {
    let deadline = tokio::time::Instant::now() + IN_TIME;
    loop {
        let (code, page) = get(http, "/metrics").await;
        assert_eq!(code, 200, "{page}");
        if sample(&page, name, labels) == Some(want) || tokio::time::Instant::now() > deadline {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_reloads_errors_and_subscribers() {
    let c = start(V1).await;
    let page = scrape_until(c.http, "weft_controller_config_version", &[], 1.0).await;
    let at = |name, labels: &[&str]| sample(&page, name, labels);
    assert_eq!(
        at("weft_controller_config_version", &[]),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        at("weft_controller_config_reloads_total", &[r#"result="ok""#]),
        Some(1.0),
        "the first load counts: {page}"
    );
    assert_eq!(
        at(
            "weft_controller_config_reloads_total",
            &[r#"result="error""#]
        ),
        Some(0.0),
        "{page}"
    );
    assert_eq!(at("weft_controller_services", &[]), Some(2.0), "{page}");
    assert_eq!(
        at("weft_controller_endpoints", &[r#"service="backend""#]),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        at("weft_controller_endpoints", &[r#"service="frontend""#]),
        Some(0.0),
        "{page}"
    );
    assert_eq!(at("weft_controller_subscribed_proxies", &[]), Some(0.0));
    assert_eq!(at("weft_controller_pushes_total", &[]), Some(0.0));
    assert!(
        page.contains("# TYPE weft_controller_config_reloads_total counter"),
        "{page}"
    );

    // A subscriber: counted, and its snapshot is a push.
    let mut client = DiscoveryClient::connect(format!("http://{}", c.grpc))
        .await
        .expect("connect grpc");
    let mut stream = client
        .watch(WatchRequest {
            service: "frontend".into(),
            proxy_id: "metrics-test".into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    stream.message().await.expect("ok").expect("snapshot");
    let page = scrape_until(c.http, "weft_controller_subscribed_proxies", &[], 1.0).await;
    assert_eq!(
        sample(&page, "weft_controller_subscribed_proxies", &[]),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, "weft_controller_pushes_total", &[]),
        Some(1.0)
    );

    // A rejected edit: an error, nothing else moves.
    replace(&c.path, BAD);
    let page = scrape_until(
        c.http,
        "weft_controller_config_reloads_total",
        &[r#"result="error""#],
        1.0,
    )
    .await;
    let at = |name, labels: &[&str]| sample(&page, name, labels);
    assert_eq!(
        at(
            "weft_controller_config_reloads_total",
            &[r#"result="error""#]
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        at("weft_controller_config_reloads_total", &[r#"result="ok""#]),
        Some(1.0)
    );
    assert_eq!(at("weft_controller_config_version", &[]), Some(1.0));
    assert_eq!(at("weft_controller_pushes_total", &[]), Some(1.0));

    // A good edit: ok, the next version, the new counts, one more push; the removed
    // service's endpoint series is gone.
    replace(&c.path, V2);
    tokio::time::timeout(IN_TIME, stream.message())
        .await
        .expect("update in time")
        .expect("ok")
        .expect("update");
    let page = scrape_until(c.http, "weft_controller_config_version", &[], 2.0).await;
    let at = |name, labels: &[&str]| sample(&page, name, labels);
    assert_eq!(
        at("weft_controller_config_version", &[]),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        at("weft_controller_config_reloads_total", &[r#"result="ok""#]),
        Some(2.0),
        "{page}"
    );
    assert_eq!(at("weft_controller_services", &[]), Some(1.0), "{page}");
    assert_eq!(
        at("weft_controller_endpoints", &[r#"service="backend""#]),
        Some(3.0),
        "{page}"
    );
    assert_eq!(
        at("weft_controller_endpoints", &[r#"service="frontend""#]),
        None,
        "{page}"
    );
    assert_eq!(at("weft_controller_pushes_total", &[]), Some(2.0), "{page}");

    // The subscriber leaves.
    drop(stream);
    drop(client);
    let page = scrape_until(c.http, "weft_controller_subscribed_proxies", &[], 0.0).await;
    assert_eq!(
        sample(&page, "weft_controller_subscribed_proxies", &[]),
        Some(0.0),
        "{page}"
    );
    c.stop.send(()).expect("stop");
    let _ = c.task.await;
}
