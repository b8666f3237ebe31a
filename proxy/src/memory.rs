//! Giving memory back once a wave of connections has receded or a load has ended:
//! the live connection count drives `weft_runtime::memory` (which says why and
//! when; a flood of 500 silent clients left a sidecar 6.5 MB larger for good
//! without it).

use std::sync::Arc;

use crate::conntable::ConnTable;

/// Watches `conns` for as long as the proxy runs, trimming after each wave.
pub async fn reclaim_after_waves(conns: Arc<ConnTable>) {
    weft_runtime::memory::reclaim_after_waves(move || conns.live_count()).await;
}
