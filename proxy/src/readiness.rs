//! The application's part of `/ready`: whether the pod's app accepts connections on
//! the ports its service sends to. A sidecar whose app is gone must not call its pod
//! ready: the kubelet (a native sidecar's readiness counts for the pod's), an
//! operator reading `weftctl status`, anything that asks `/ready`, would route to a
//! pod that can only refuse (ARCHITECTURE.md, Ports).
//!
//! Which ports: the target ports of the proxy's own service (`--service`), when this
//! pod is one of that service's endpoints, served or withheld. Withheld counts: a pod
//! the kubelet holds not ready (or the controller withdrew) stays its service's pod,
//! so the answer does not flap with its own effect. No service, or a service this
//! pod does not back (a client's sidecar): no port, and `/ready` is the proxy's own
//! readiness alone, as before.
//!
//! What must not wait for the app (the local mesh starting the app after its
//! sidecar, the Kubernetes `startupProbe` that holds the app container until the
//! proxy listens) asks `/ready/proxy` or `/live` instead.
//!
//! One check runs at a time and its result is kept for [`TTL`]: a storm of scrapes
//! costs the app at most one connection per port per second.

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::routes::RouteTable;

/// How long a check's result answers `/ready`.
pub const TTL: Duration = Duration::from_secs(1);

/// The ports `/ready` checks: `service`'s target ports, when one of `pod`'s
/// addresses is among its endpoints (served or withheld) in `table`; else none.
pub fn app_ports(table: &RouteTable, service: &str, pod: &[IpAddr]) -> Vec<u16> {
    let Some(spec) = table.service(service) else {
        return Vec::new();
    };
    let backs = spec
        .endpoints
        .iter()
        .chain(&spec.withheld)
        .any(|ip| pod.iter().any(|p| p.to_canonical() == ip.to_canonical()));
    if !backs {
        return Vec::new();
    }
    let mut ports: Vec<u16> = spec.ports.iter().map(|p| p.target_port).collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The last check of the app's ports, shared by every `/ready` request.
#[derive(Debug, Default)]
pub struct AppCheck {
    last: Mutex<Option<Checked>>,
}

#[derive(Debug)]
struct Checked {
    at: Instant,
    ports: Vec<u16>,
    result: Result<(), String>,
}

impl AppCheck {
    /// Whether the app accepts on every one of `ports` (`accepts(port)` dials one),
    /// or why not: the last result if it is younger than [`TTL`] and was for the
    /// same ports, else a new check. Callers arriving during a check wait for it.
    pub async fn check<F, Fut>(&self, ports: &[u16], accepts: F) -> Result<(), String>
    where
        F: Fn(u16) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let mut last = self.last.lock().await;
        if let Some(c) = last
            .as_ref()
            .filter(|c| c.ports == ports && c.at.elapsed() < TTL)
        {
            return c.result.clone();
        }
        let mut result = Ok(());
        for &port in ports {
            if let Err(why) = accepts(port).await {
                result = Err(why);
                break;
            }
        }
        *last = Some(Checked {
            at: Instant::now(),
            ports: ports.to_vec(),
            result: result.clone(),
        });
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::routes::{test_spec, ServicePort};

    fn ip(a: &str) -> IpAddr {
        a.parse().expect("ip")
    }

    #[test]
    fn the_ports_of_the_service_this_pod_backs() {
        let mut web = test_spec("web", "10.96.0.1", &["10.0.0.1"]);
        web.withheld = vec![ip("10.0.0.2")];
        web.ports.push(ServicePort {
            port: 9090,
            target_port: 9090,
            protocol: crate::routes::PortProtocol::Auto,
        });
        web.ports.push(ServicePort {
            port: 81,
            target_port: 8080,
            protocol: crate::routes::PortProtocol::Http,
        });
        let front = test_spec("front", "10.96.0.2", &["10.0.0.3"]);
        let t = RouteTable::from_services([web, front]);
        assert_eq!(app_ports(&t, "web", &[ip("10.0.0.1")]), [8080, 9090]);
        assert_eq!(
            app_ports(&t, "web", &[ip("fd00::1"), ip("10.0.0.2")]),
            [8080, 9090],
            "a withheld endpoint is still the service's pod"
        );
        assert!(
            app_ports(&t, "web", &[ip("10.0.0.3")]).is_empty(),
            "not web's pod"
        );
        assert!(app_ports(&t, "unknown", &[ip("10.0.0.1")]).is_empty());
        assert!(app_ports(&RouteTable::default(), "web", &[ip("10.0.0.1")]).is_empty());
    }

    /// Counts dials; port 1 refuses.
    fn dialer(count: &Arc<AtomicUsize>) -> impl Fn(u16) -> std::future::Ready<Result<(), String>> {
        let count = count.clone();
        move |port| {
            count.fetch_add(1, Ordering::SeqCst);
            std::future::ready(if port == 1 {
                Err("app port 1: connect_refused".to_owned())
            } else {
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn a_result_is_kept_for_its_ports_and_a_while() {
        let dials = Arc::new(AtomicUsize::new(0));
        let check = AppCheck::default();
        assert_eq!(check.check(&[8080], dialer(&dials)).await, Ok(()));
        assert_eq!(check.check(&[8080], dialer(&dials)).await, Ok(()));
        assert_eq!(
            dials.load(Ordering::SeqCst),
            1,
            "the second is answered from the cache"
        );
        let refused = check.check(&[1, 8080], dialer(&dials)).await;
        assert_eq!(refused, Err("app port 1: connect_refused".to_owned()));
        assert_eq!(
            dials.load(Ordering::SeqCst),
            2,
            "other ports: checked, up to the first failure"
        );
        {
            // Aged past the TTL: checked again.
            let mut last = check.last.lock().await;
            if let Some(c) = last.as_mut() {
                c.at = c.at.checked_sub(TTL).expect("an instant a second ago");
            }
        }
        assert!(check.check(&[1, 8080], dialer(&dials)).await.is_err());
        assert_eq!(dials.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_one_check() {
        let dials = Arc::new(AtomicUsize::new(0));
        let check = Arc::new(AppCheck::default());
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let check = check.clone();
                let dials = dials.clone();
                tokio::spawn(async move { check.check(&[8080], dialer(&dials)).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.expect("task"), Ok(()));
        }
        assert_eq!(dials.load(Ordering::SeqCst), 1);
    }
}
