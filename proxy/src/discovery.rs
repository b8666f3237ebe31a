//! The discovery client: subscribes to the controller's `Watch` stream and keeps the
//! routing table current. The controller being away never stops the data path:
//! the last known table stays in force while the client reconnects with backoff.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weft_api::discovery::{self as api, MeshUpdate, WatchRequest};
use weft_api::DiscoveryClient;

use crate::routes::{PortProtocol, Routes, ServicePort, ServiceSpec};

/// Where to subscribe and as whom.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    /// The controller's gRPC URL, e.g. `http://10.211.0.1:15010`.
    pub controller: String,
    /// This proxy's service (sent so the controller can log and count subscribers).
    pub service: String,
    /// A free-form id for the controller's logs, e.g. the pod name.
    pub proxy_id: String,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Runs forever: subscribe, apply updates, and on any failure wait (doubling from
/// 100 ms up to 5 s) and subscribe again. `synced` turns true with the first
/// snapshot and stays true (the last known state keeps serving).
pub async fn run(config: DiscoveryConfig, routes: Arc<Routes>, synced: Arc<AtomicBool>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        match watch_once(&config, &routes, &synced, &mut backoff).await {
            Ok(()) => {
                tracing::warn!(controller = %config.controller, "discovery stream ended; reconnecting")
            }
            Err(e) => {
                tracing::warn!(controller = %config.controller, error = %e, retry_in = ?backoff, "discovery unavailable; keeping the last known routes")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn watch_once(
    config: &DiscoveryConfig,
    routes: &Routes,
    synced: &AtomicBool,
    backoff: &mut Duration,
) -> Result<(), tonic::Status> {
    let mut client = DiscoveryClient::connect(config.controller.clone())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut stream = client
        .watch(WatchRequest {
            service: config.service.clone(),
            proxy_id: config.proxy_id.clone(),
        })
        .await?
        .into_inner();
    while let Some(update) = stream.message().await? {
        apply(routes, &update);
        *backoff = BACKOFF_MIN;
        if update.full_snapshot && !synced.swap(true, Ordering::SeqCst) {
            tracing::info!(
                services = routes.load().service_count(),
                version = update.version,
                "first discovery snapshot applied"
            );
        } else {
            tracing::debug!(
                version = update.version,
                full = update.full_snapshot,
                "discovery update applied"
            );
        }
    }
    Ok(())
}

/// Applies one update to the routing table.
pub fn apply(routes: &Routes, update: &MeshUpdate) {
    let specs = update.services.iter().filter_map(|s| match spec_of(s) {
        Ok(spec) => Some(spec),
        Err(why) => {
            tracing::warn!(service = %s.name, why, "ignoring an invalid service from discovery");
            None
        }
    });
    let next = routes
        .load()
        .updated(update.full_snapshot, specs, update.removed.iter());
    routes.store(next);
}

/// The routing view of a discovery service; the controller validated it, but a
/// proxy never trusts the wire blindly.
fn spec_of(s: &api::Service) -> Result<ServiceSpec, String> {
    let vip: IpAddr = s.vip.parse().map_err(|_| format!("bad vip {:?}", s.vip))?;
    let port = |p: u32| u16::try_from(p).ok().filter(|p| *p != 0);
    let ports = s
        .ports
        .iter()
        .map(|p| {
            Ok(ServicePort {
                port: port(p.port).ok_or_else(|| format!("bad port {}", p.port))?,
                target_port: port(p.target_port)
                    .ok_or_else(|| format!("bad target port {}", p.target_port))?,
                protocol: match api::Protocol::try_from(p.protocol) {
                    Ok(api::Protocol::Http) => PortProtocol::Http,
                    Ok(api::Protocol::Tcp) => PortProtocol::Tcp,
                    _ => PortProtocol::Auto,
                },
            })
        })
        .collect::<Result<_, String>>()?;
    let endpoints = s
        .endpoints
        .iter()
        .map(|e| {
            e.address
                .parse()
                .map_err(|_| format!("bad endpoint {:?}", e.address))
        })
        .collect::<Result<_, String>>()?;
    Ok(ServiceSpec {
        name: s.name.clone(),
        vip,
        ports,
        endpoints,
    })
}
