//! A long-lived connection's view of its service's balancer, kept current. An HTTP
//! connection (keep-alive, h2) serves many requests over minutes or hours; each
//! must be balanced over the endpoints discovery says now, not over those of when
//! the connection began (a rolling restart would otherwise leave it with endpoints
//! that are all gone).
//!
//! Per request the cost is one atomic load and an uncontended lock: the route is
//! looked up again only when the routing table changed since the last request.

use std::sync::{Arc, Mutex, MutexGuard};

use super::{Balancer, Conns, Registry};
use crate::addr::OrigDstAddr;
use crate::routes::{Resolved, Routes};

/// The balancer of the service behind one original destination, followed across
/// routing-table updates.
#[derive(Debug)]
pub struct Follow<C> {
    routes: Arc<Routes>,
    registry: Arc<Registry<C>>,
    orig_dst: OrigDstAddr,
    /// The table generation `balancer` was found at.
    current: Mutex<(u64, Arc<Balancer<C>>)>,
}

impl<C: Conns> Follow<C> {
    /// Follows `orig_dst`'s service, starting from `balancer`, found in the table
    /// of `generation`.
    pub fn new(
        routes: Arc<Routes>,
        registry: Arc<Registry<C>>,
        orig_dst: OrigDstAddr,
        generation: u64,
        balancer: Arc<Balancer<C>>,
    ) -> Self {
        Follow {
            routes,
            registry,
            orig_dst,
            current: Mutex::new((generation, balancer)),
        }
    }

    /// The balancer for the next request; `None` when the destination is no longer
    /// a service.
    pub fn balancer(&self) -> Option<Arc<Balancer<C>>> {
        // Read before the table: a table stored in between is found again next time.
        let generation = self.routes.generation();
        let mut current = lock(&self.current);
        if current.0 != generation {
            match self.routes.load().resolve(self.orig_dst) {
                Resolved::Service(route) => {
                    *current = (generation, self.registry.balancer(&route));
                }
                Resolved::Passthrough => return None,
            }
        }
        Some(current.1.clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
