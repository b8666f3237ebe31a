//! Giving memory back once a wave of connections has receded or a load has ended:
//! the live connection count drives `weft_runtime::memory` (which says why and
//! when; a flood of 500 silent clients left a sidecar 6.5 MB larger for good
//! without it). Before each trim, the HTTP pools close their idle connections but a
//! few per endpoint, outbound and inbound: a load's worth of them otherwise stays
//! for the idle timeout (5 minutes), each with hyper's buffers.

use std::sync::Arc;

use crate::l7::pool::KEEP_IDLE_H1_AFTER_LOAD;
use crate::state::Shared;

/// Watches `shared`'s connections for as long as the proxy runs, trimming after
/// each wave or load.
pub async fn reclaim_after_waves(shared: Arc<Shared>) {
    let conns = shared.conns.clone();
    weft_runtime::memory::reclaim_after_waves(
        move || conns.live_count(),
        move || {
            let mut shed = shared.l7.shed_idle_inbound();
            shared
                .balancers
                .each_conns(|pool| shed += pool.shed_idle(KEEP_IDLE_H1_AFTER_LOAD));
            if shed > 0 {
                tracing::debug!(shed, "idle pooled HTTP/1 connections closed after a load");
            }
        },
    )
    .await;
}
