//! What the proxy's in-process tests share: a configuration with every listener on
//! loopback at a free port, and waiting (bounded) for something the proxy records
//! just after the client sees it.

// Each test binary uses its own subset.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use weft_proxy::ProxyConfig;

/// A configuration for `service` whose listeners (outbound, inbound, admin, metrics)
/// are all on 127.0.0.1 at ports the kernel picks.
pub fn loopback_config(service: &str) -> ProxyConfig {
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = ProxyConfig::with_ports(0, 0);
    config.service = service.into();
    config.outbound_listen = vec![local];
    config.inbound_listen = vec![local];
    config.admin_listen = local;
    config.metrics_listen = local;
    config
}

/// Waits up to 2 s until `f` holds; proxies record a connection's close just after
/// the client sees it.
pub async fn eventually(what: &str, f: impl AsyncFnMut() -> bool) {
    eventually_within(what, Duration::from_secs(2), f).await
}

/// Waits up to `limit` until `f` holds, checking every 10 ms.
pub async fn eventually_within(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let tries = limit.as_millis() / 10;
    for _ in 0..tries {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}
