//! Finding a route's balancer: made on first use and kept while its route is alive;
//! endpoints (with their health, and the HTTP pool) shared by address, so a route
//! whose endpoint set changed keeps the warm connections — and breaker state — of
//! the endpoints it kept. Consulted once per connection, never per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use opentelemetry::metrics::Counter;

use super::{Balancer, Conns, Ejections, Endpoint};
use crate::addr::EndpointAddr;
use crate::routes::ServiceRoute;

/// A balancer and (weakly) the route it belongs to.
type RouteBalancer<C> = (Weak<ServiceRoute>, Arc<Balancer<C>>);

/// Balancers by route, endpoints by address.
#[derive(Debug)]
pub struct Registry<C> {
    /// Keyed by the route's address; the `Weak` tells whether that route still lives
    /// (a live allocation cannot share its address with another).
    balancers: Mutex<HashMap<usize, RouteBalancer<C>>>,
    endpoints: Mutex<HashMap<EndpointAddr, Weak<Endpoint<C>>>>,
    /// `weft_endpoint_ejections_total`, when metrics are recorded.
    ejections: Option<Counter<u64>>,
}

impl<C> Default for Registry<C> {
    fn default() -> Self {
        Registry {
            balancers: Mutex::new(HashMap::new()),
            endpoints: Mutex::new(HashMap::new()),
            ejections: None,
        }
    }
}

impl<C> Registry<C> {
    /// A registry whose balancers count their ejections in `ejections`.
    pub fn counting_ejections(ejections: Counter<u64>) -> Self {
        Registry {
            ejections: Some(ejections),
            ..Registry::default()
        }
    }
}

impl<C> Registry<C> {
    /// Calls `f` with what each endpoint still in use keeps (its HTTP pool).
    pub fn each_conns(&self, mut f: impl FnMut(&C)) {
        for endpoint in lock(&self.endpoints).values().filter_map(Weak::upgrade) {
            f(&endpoint.conns);
        }
    }
}

impl<C: Conns> Registry<C> {
    /// The balancer of `route`, made on first use.
    pub fn balancer(&self, route: &Arc<ServiceRoute>) -> Arc<Balancer<C>> {
        let key = Arc::as_ptr(route) as usize;
        let mut balancers = lock(&self.balancers);
        if let Some((alive, b)) = balancers.get(&key) {
            if alive.strong_count() > 0 {
                return b.clone();
            }
        }
        // A new route (or a new version of one): forget balancers of routes gone.
        balancers.retain(|_, (alive, _)| alive.strong_count() > 0);
        let endpoints = {
            let mut known = lock(&self.endpoints);
            known.retain(|_, e| e.strong_count() > 0);
            route
                .endpoints()
                .map(|addr| shared_endpoint(&mut known, addr))
                .collect()
        };
        let ejections = match &self.ejections {
            Some(counter) => Ejections::new(counter.clone(), route.service.clone()),
            None => Ejections::default(),
        };
        let meshed = route
            .endpoints()
            .map(|e| e.0.ip())
            .filter(|ip| route.is_meshed(*ip))
            .map(|ip| (ip, route.identity(ip).cloned()))
            .collect();
        let b = Arc::new(Balancer::new(endpoints, meshed, route.policy, ejections));
        balancers.insert(key, (Arc::downgrade(route), b.clone()));
        b
    }
}

fn shared_endpoint<C: Conns>(
    known: &mut HashMap<EndpointAddr, Weak<Endpoint<C>>>,
    addr: EndpointAddr,
) -> Arc<Endpoint<C>> {
    if let Some(e) = known.get(&addr).and_then(Weak::upgrade) {
        return e;
    }
    let e = Arc::new(Endpoint::new(addr));
    known.insert(addr, Arc::downgrade(&e));
    e
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::OrigDstAddr;
    use crate::routes::{test_spec as spec, Resolved, RouteTable};

    fn dst(s: &str) -> OrigDstAddr {
        OrigDstAddr(s.parse().expect("addr"))
    }

    /// `n` picks for a connection to `to`, as the proxy makes them: the route's
    /// balancer from the registry, per connection.
    fn picks(reg: &Registry<()>, table: &RouteTable, to: &str, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| match table.resolve(dst(to)) {
                Resolved::Service(r) => reg
                    .balancer(&r)
                    .pick(None)
                    .map(|p| p.endpoint.addr().to_string())
                    .unwrap_or_default(),
                Resolved::Passthrough => "passthrough".into(),
            })
            .collect()
    }

    #[test]
    fn round_robin_over_endpoints_with_target_port() {
        let reg = Registry::default();
        let t = RouteTable::from_services([spec(
            "backend",
            "10.96.0.10",
            &["10.0.0.1", "10.0.0.2", "10.0.0.3"],
        )]);
        assert_eq!(
            picks(&reg, &t, "10.96.0.10:80", 6),
            [
                "10.0.0.1:8080",
                "10.0.0.2:8080",
                "10.0.0.3:8080",
                "10.0.0.1:8080",
                "10.0.0.2:8080",
                "10.0.0.3:8080"
            ]
        );
        assert_eq!(picks(&reg, &t, "10.96.0.10:81", 1), ["passthrough"]);
        assert_eq!(picks(&reg, &t, "10.96.0.11:80", 1), ["passthrough"]);
        assert_eq!(
            t.service_of_peer("10.0.0.2".parse().expect("ip"))
                .as_deref(),
            Some("backend")
        );
        assert_eq!(
            t.service_of_peer("::ffff:10.0.0.2".parse().expect("ip"))
                .as_deref(),
            Some("backend")
        );
    }

    #[test]
    fn ipv6_vip_and_mapped_destinations() {
        let reg = Registry::default();
        let t = RouteTable::from_services([spec("v6", "fd00:96::10", &["fd00:211::3"])]);
        assert_eq!(
            picks(&reg, &t, "[fd00:96::10]:80", 1),
            ["[fd00:211::3]:8080"]
        );
    }

    #[test]
    fn no_endpoints_picks_nothing() {
        let reg = Registry::default();
        let t = RouteTable::from_services([spec("empty", "10.96.0.12", &[])]);
        assert_eq!(picks(&reg, &t, "10.96.0.12:80", 1), [""]);
    }

    #[test]
    fn incremental_updates_keep_untouched_rotation() {
        let reg = Registry::default();
        let t = RouteTable::from_services([
            spec("a", "10.96.0.1", &["10.0.0.1", "10.0.0.2"]),
            spec("b", "10.96.0.2", &["10.0.1.1"]),
        ]);
        assert_eq!(picks(&reg, &t, "10.96.0.1:80", 1), ["10.0.0.1:8080"]);
        // b changes, a is re-sent unchanged: a's rotation continues.
        let t2 = t.updated(
            false,
            [
                spec("a", "10.96.0.1", &["10.0.0.1", "10.0.0.2"]),
                spec("b", "10.96.0.2", &["10.0.1.9"]),
            ],
            std::iter::empty::<&str>(),
        );
        assert_eq!(picks(&reg, &t2, "10.96.0.1:80", 1), ["10.0.0.2:8080"]);
        assert_eq!(picks(&reg, &t2, "10.96.0.2:80", 1), ["10.0.1.9:8080"]);
        let t3 = t2.updated(false, std::iter::empty(), ["b"]);
        assert_eq!(picks(&reg, &t3, "10.96.0.2:80", 1), ["passthrough"]);
        assert_eq!(t3.service_count(), 1);
        let t4 = t3.updated(
            true,
            [spec("c", "10.96.0.3", &["10.0.2.1"])],
            std::iter::empty::<&str>(),
        );
        assert_eq!(picks(&reg, &t4, "10.96.0.1:80", 1), ["passthrough"]);
        assert_eq!(t4.service_count(), 1);
    }
}
