//! What a running setup's counters say, read before and after each bench run: the
//! app's request count, the connections accepted by what the load generator dials,
//! both proxies' request or connection counters (weft's `/metrics`, nginx's
//! `stub_status` and stream access logs, haproxy's stats CSV), the client pod's sk_msg
//! redirect count, and the proxies' CPU time and memory. [`super::measure`] parses
//! what is read here.

use anyhow::{bail, Context as _, Result};

use super::configs::*;
use super::load::Proto;
use super::measure::{self, ProcUsage};
use super::setups::{Bench, Running, SetupKind, Side};

/// With sk_msg on: the client pod's count of messages sk_msg redirected (the
/// pinned stats map), proof that the short-circuit carried the traffic.
pub fn msg_redirected(bench: &Bench, r: &Running) -> Result<Option<u64>> {
    if r.kind != SetupKind::WeftEbpfSockmap {
        return Ok(None);
    }
    let cg = bench
        .cgroup(Side::Client)
        .context("eBPF mode needs the pod cgroups")?;
    cg.stat(weft_localmesh::Stat::MsgRedirected)
        .map(Some)
        .context("reading the client pod's sk_msg counter")
}

pub fn usage(r: &Running) -> Option<(ProcUsage, ProcUsage)> {
    r.proxies
        .as_ref()
        .map(|(c, s)| (ProcUsage::of(c.pid()), ProcUsage::of(s.pid())))
}

/// The app's total request count (its `stub_status`; the read counts itself).
pub fn app_requests(bench: &Bench) -> Result<u64> {
    let (status, body) = bench.pod(Side::Server).http_get(local(APP_STATUS), "/")?;
    if status != 200 {
        bail!("the app's stub_status answered {status}");
    }
    measure::stub_status_requests(&body).context("the app's stub_status")
}

/// Connections accepted so far by what the load generator dials: the app for
/// `direct`, else the client-side proxy (weft's outbound
/// `weft_tcp_connections_opened_total`, nginx's `stub_status` accepts, haproxy's
/// `h1` sessions). Reads of a status page count themselves; only lower bounds are
/// checked.
pub fn accepted(bench: &Bench, r: &Running) -> Result<f64> {
    let pod = bench.pod(Side::Client);
    Ok(match r.kind {
        SetupKind::Direct => {
            let (status, body) = bench.pod(Side::Server).http_get(local(APP_STATUS), "/")?;
            if status != 200 {
                bail!("the app's stub_status answered {status}");
            }
            measure::stub_status_accepts(&body).context("the app's stub_status")? as f64
        }
        SetupKind::WeftIptables
        | SetupKind::WeftMtls
        | SetupKind::WeftEbpf
        | SetupKind::WeftEbpfSockmap => {
            let (status, body) = pod.http_get(local(WEFT_METRICS), "/metrics")?;
            if status != 200 {
                bail!("weft /metrics answered {status}");
            }
            measure::prom_sum(
                &body,
                "weft_tcp_connections_opened_total",
                &[("direction", "outbound")],
            )
        }
        SetupKind::Nginx => {
            let (status, body) = pod.http_get(local(NGINX_STATUS), "/")?;
            if status != 200 {
                bail!("nginx stub_status answered {status}");
            }
            measure::stub_status_accepts(&body)? as f64
        }
        SetupKind::Haproxy => {
            let (status, body) = pod.http_get(local(HAPROXY_STATS), "/stats;csv")?;
            if status != 200 {
                bail!("haproxy stats answered {status}");
            }
            measure::haproxy_frontend(&body, "h1", "stot")?
        }
    })
}

/// Which traffic a proxy counter is read for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// HTTP requests of this version.
    Http(Proto),
    /// iperf3's TCP connections.
    Tcp,
    /// The banner app's connections.
    Banner,
}

/// The (client-side, server-side) counters that prove the proxies carried the
/// traffic: HTTP requests, or TCP connections for [`Traffic::Tcp`] and
/// [`Traffic::Banner`]. weft counts connections across ports (the runs never
/// overlap, so a difference over one run is that run's); nginx and haproxy count
/// per port.
pub fn proxy_counters(bench: &Bench, r: &Running, traffic: Traffic) -> Result<Option<[f64; 2]>> {
    let mut out = [0.0; 2];
    for (i, side) in [Side::Client, Side::Server].into_iter().enumerate() {
        let pod = bench.pod(side);
        out[i] = match r.kind {
            SetupKind::Direct => return Ok(None),
            SetupKind::WeftIptables
            | SetupKind::WeftMtls
            | SetupKind::WeftEbpf
            | SetupKind::WeftEbpfSockmap => {
                let (status, body) = pod.http_get(local(WEFT_METRICS), "/metrics")?;
                if status != 200 {
                    bail!("weft /metrics answered {status}");
                }
                let direction = match side {
                    Side::Client => "outbound",
                    Side::Server => "inbound",
                };
                let name = match traffic {
                    Traffic::Http(_) => "weft_http_requests_total",
                    Traffic::Tcp | Traffic::Banner => "weft_tcp_connections_opened_total",
                };
                measure::prom_sum(&body, name, &[("direction", direction)])
            }
            SetupKind::Nginx => match traffic {
                Traffic::Http(_) => {
                    let (status, body) = pod.http_get(local(NGINX_STATUS), "/")?;
                    if status != 200 {
                        bail!("nginx stub_status answered {status}");
                    }
                    // Minus the read itself, counted before it is answered.
                    measure::stub_status_requests(&body)? as f64 - 1.0
                }
                Traffic::Tcp | Traffic::Banner => {
                    let log = if traffic == Traffic::Tcp {
                        "stream"
                    } else {
                        "banner"
                    };
                    let log = bench
                        .run_dir()
                        .join(format!("nginx-{}-{log}.log", side.name()));
                    std::fs::read_to_string(&log)
                        .map(|s| s.lines().count())
                        .unwrap_or(0) as f64
                }
            },
            SetupKind::Haproxy => {
                let (status, body) = pod.http_get(local(HAPROXY_STATS), "/stats;csv")?;
                if status != 200 {
                    bail!("haproxy stats answered {status}");
                }
                let (frontend, field) = match traffic {
                    Traffic::Http(Proto::Http1) => ("h1", "req_tot"),
                    Traffic::Http(Proto::H2) => ("h2", "req_tot"),
                    Traffic::Tcp => ("tcp", "stot"),
                    Traffic::Banner => ("banner", "stot"),
                };
                measure::haproxy_frontend(&body, frontend, field)?
            }
        };
    }
    Ok(Some(out))
}
