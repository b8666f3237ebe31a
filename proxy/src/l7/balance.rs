//! Per-request load balancing and the registry that finds a route's balancer.
//!
//! A [`Balancer`] belongs to one [`ServiceRoute`] (one VIP:port at one version of its
//! endpoint set) and holds the [`EndpointPool`] of each endpoint; a request picks by
//! round robin with one atomic increment — no lock on the request path. The
//! registry is consulted once per connection: balancers are kept while their route
//! is alive (a route the discovery update did not touch keeps its balancer, rotation
//! and pools included), and pools are shared by endpoint address, so a route whose
//! endpoint set changed keeps the warm connections of the endpoints it kept.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::pool::EndpointPool;
use crate::addr::EndpointAddr;
use crate::routes::ServiceRoute;

/// Inbound pools (one per local application address) kept at most; past this, the
/// ones no connection uses are dropped.
const MAX_INBOUND_POOLS: usize = 1024;

/// Round robin over one route's endpoints.
#[derive(Debug)]
pub struct Balancer {
    endpoints: Box<[Arc<EndpointPool>]>,
    next: AtomicUsize,
}

impl Balancer {
    /// The next endpoint; `None` when the service has none.
    pub fn pick(&self) -> Option<&Arc<EndpointPool>> {
        if self.endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        self.endpoints.get(i)
    }
}

/// A balancer and (weakly) the route it belongs to.
type RouteBalancer = (Weak<ServiceRoute>, Arc<Balancer>);

/// Balancers by route, pools by endpoint.
#[derive(Debug, Default)]
pub struct Registry {
    /// Keyed by the route's address; the `Weak` tells whether that route still lives
    /// (a live allocation cannot share its address with another).
    balancers: Mutex<HashMap<usize, RouteBalancer>>,
    pools: Mutex<HashMap<EndpointAddr, Weak<EndpointPool>>>,
    inbound: Mutex<HashMap<EndpointAddr, Arc<EndpointPool>>>,
}

impl Registry {
    /// The balancer of `route`, made on first use.
    pub fn balancer(&self, route: &Arc<ServiceRoute>) -> Arc<Balancer> {
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
            let mut pools = lock(&self.pools);
            pools.retain(|_, p| p.strong_count() > 0);
            route
                .endpoints()
                .map(|addr| shared_pool(&mut pools, addr))
                .collect()
        };
        let b = Arc::new(Balancer {
            endpoints,
            next: AtomicUsize::new(0),
        });
        balancers.insert(key, (Arc::downgrade(route), b.clone()));
        b
    }

    /// The pool of a local application address (inbound traffic).
    pub fn inbound(&self, addr: EndpointAddr) -> Arc<EndpointPool> {
        let mut inbound = lock(&self.inbound);
        if let Some(p) = inbound.get(&addr) {
            return p.clone();
        }
        if inbound.len() >= MAX_INBOUND_POOLS {
            inbound.retain(|_, p| Arc::strong_count(p) > 1);
        }
        let p = Arc::new(EndpointPool::new(addr));
        inbound.insert(addr, p.clone());
        p
    }
}

fn shared_pool(
    pools: &mut HashMap<EndpointAddr, Weak<EndpointPool>>,
    addr: EndpointAddr,
) -> Arc<EndpointPool> {
    if let Some(p) = pools.get(&addr).and_then(Weak::upgrade) {
        return p;
    }
    let p = Arc::new(EndpointPool::new(addr));
    pools.insert(addr, Arc::downgrade(&p));
    p
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::OrigDstAddr;
    use crate::routes::{PortProtocol, Resolved, RouteTable, ServicePort, ServiceSpec};

    fn route(table: &RouteTable) -> Arc<ServiceRoute> {
        match table.resolve(OrigDstAddr("10.96.0.1:80".parse().expect("addr"))) {
            Resolved::Service(r) => r,
            Resolved::Passthrough => panic!("no route"),
        }
    }

    fn table(endpoints: &[&str]) -> RouteTable {
        RouteTable::from_services([ServiceSpec {
            name: "b".into(),
            vip: "10.96.0.1".parse().expect("vip"),
            ports: vec![ServicePort {
                port: 80,
                target_port: 8080,
                protocol: PortProtocol::Auto,
            }],
            endpoints: endpoints.iter().map(|e| e.parse().expect("ip")).collect(),
        }])
    }

    #[test]
    fn round_robin_per_pick_and_pools_shared_across_versions() {
        let reg = Registry::default();
        let t1 = table(&["10.0.0.1", "10.0.0.2"]);
        let b1 = reg.balancer(&route(&t1));
        assert!(Arc::ptr_eq(&b1, &reg.balancer(&route(&t1))));
        let picks: Vec<String> = (0..4)
            .map(|_| b1.pick().expect("endpoint").addr().to_string())
            .collect();
        assert_eq!(
            picks,
            [
                "10.0.0.1:8080",
                "10.0.0.2:8080",
                "10.0.0.1:8080",
                "10.0.0.2:8080"
            ]
        );
        let t2 = table(&["10.0.0.2", "10.0.0.3"]);
        let b2 = reg.balancer(&route(&t2));
        assert!(!Arc::ptr_eq(&b1, &b2));
        let kept = b1.endpoints[1].clone();
        assert!(
            Arc::ptr_eq(&kept, &b2.endpoints[0]),
            "10.0.0.2's pool is shared"
        );
        assert!(reg.balancer(&route(&table(&[]))).pick().is_none());
    }
}
