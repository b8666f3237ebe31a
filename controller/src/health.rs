//! Active health checks. The controller probes endpoints — a TCP connect to a port by
//! default, `GET <path>` when the service's policy names one — and an endpoint that
//! fails `unhealthy_threshold` checks in a row is withdrawn from what proxies receive;
//! `healthy_threshold` passes in a row bring it back.
//!
//! Policy:
//!
//! - Which endpoints are checked: those of a service whose policy has a
//!   `health_check` (every endpoint, whatever its source); otherwise per the
//!   controller's `--health-checks`: `registered` (the default: registered endpoints
//!   only — machines outside any orchestrator, with no other health signal), `all`, or
//!   `off`. Kubernetes endpoints already carry the kubelet's readiness.
//! - A new endpoint starts healthy (served) and is withdrawn only by failures: a
//!   controller that restarts must not withdraw every endpoint until its first checks
//!   pass.
//! - Every endpoint is withdrawn when every one fails: proxies then fail fast (`503`,
//!   `no_endpoints`) rather than send traffic to endpoints known to be down.
//! - A meshed endpoint (a sidecar serves it: see `State::sidecar`) is checked
//!   through its sidecar, `GET <endpoint>:15020/app-health/<port>[<http_path>]`, which
//!   the sidecar answers by connecting to its app from inside the pod: a TCP connect
//!   (or a `GET`) to the endpoint would reach the sidecar, not the app, and pass
//!   while the app is dead. This applies to meshed endpoints of the mesh file and the
//!   registration API under the `registered` scope too (Kubernetes endpoints carry
//!   the kubelet's readiness; `all` checks them as well), and to a service's own
//!   `health_check` policy: its port, path, interval and thresholds are kept, only
//!   the way to the app changes.
//!
//! One task per checked endpoint; the [`HealthTable`] holds every result and is what
//! `/v1/services` and `/metrics` show.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::merge::Catalog;
use crate::model::{HealthCheckPolicy, Name, SourceKind};

/// Which endpoints are checked when their service's policy does not say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Scope {
    /// None (a service's `policy.health_check` still applies).
    Off,
    /// Registered endpoints only.
    #[default]
    Registered,
    /// Every endpoint.
    All,
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Scope::Off),
            "registered" => Ok(Scope::Registered),
            "all" => Ok(Scope::All),
            _ => Err(format!("{s:?}: use off, registered or all")),
        }
    }
}

/// The controller's defaults for checks (its flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// Which endpoints are checked when their service's policy does not say.
    pub scope: Scope,
    /// Time between two checks of one endpoint.
    pub interval: Duration,
    /// How long one check may take.
    pub timeout: Duration,
    /// Consecutive failures that withdraw an endpoint.
    pub unhealthy_threshold: NonZeroU32,
    /// Consecutive successes that bring it back.
    pub healthy_threshold: NonZeroU32,
    /// The sidecars' metrics and health port, where meshed endpoints are checked
    /// (`/app-health/<port>`).
    pub sidecar_health_port: u16,
}

/// weft-proxy's default metrics and health port.
pub const SIDECAR_HEALTH_PORT: u16 = 15020;

impl Default for Defaults {
    /// Every 5 s, 1 s timeout, withdrawn after 2 failures (so within 3 intervals of
    /// an endpoint going down), back after 2 passes.
    fn default() -> Self {
        Defaults {
            scope: Scope::Registered,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN),
            healthy_threshold: NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN),
            sidecar_health_port: SIDECAR_HEALTH_PORT,
        }
    }
}

/// One endpoint's check, resolved from the service's policy and the defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// What is dialled.
    pub target: SocketAddr,
    /// `GET` this path (a 2xx passes); `None`: a TCP connect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_path: Option<String>,
    #[serde(with = "as_humantime")]
    pub interval: Duration,
    #[serde(with = "as_humantime")]
    pub timeout: Duration,
    pub unhealthy_threshold: NonZeroU32,
    pub healthy_threshold: NonZeroU32,
    /// Through the endpoint's sidecar (`/app-health`): a check that times out says
    /// the sidecar is busy, not that the application is gone, and counts for
    /// nothing. Withdrawing endpoints whose proxies are merely saturated would
    /// move their load onto the others and take the whole service down in turn;
    /// the proxies' outlier detection handles a slow endpoint.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub via_sidecar: bool,
}

mod as_humantime {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// The checks `catalog` needs under `defaults`, by service and address; endpoints
/// at `meshed` addresses are checked through their sidecar.
pub fn probes(
    catalog: &Catalog,
    defaults: &Defaults,
    meshed: &BTreeSet<IpAddr>,
) -> BTreeMap<(Name, IpAddr), Probe> {
    let mut out = BTreeMap::new();
    // An endpoint its source says is not ready is not served anyway: its readiness
    // is that source's business (the kubelet's probes).
    for (name, entry, ep) in catalog.endpoints().filter(|(_, _, e)| e.ready) {
        let policy = entry.service.policy.health_check.as_ref();
        let via_sidecar = meshed.contains(&ep.address);
        let checked = match policy {
            Some(p) => p.enabled,
            None => match defaults.scope {
                Scope::Off => false,
                Scope::Registered => {
                    ep.sources.contains(&SourceKind::Registry)
                        || (via_sidecar && ep.sources.iter().any(|s| *s != SourceKind::Kubernetes))
                }
                Scope::All => true,
            },
        };
        if !checked {
            continue;
        }
        let none = HealthCheckPolicy::default();
        let p = policy.unwrap_or(&none);
        let port = p
            .port
            .or_else(|| ep.registration.as_ref().and_then(|r| r.port))
            .or_else(|| entry.service.ports.first().map(|p| p.target_port));
        let Some(port) = port else { continue };
        let interval = p.interval.unwrap_or(defaults.interval);
        let (target, http_path) = if via_sidecar {
            // The sidecar sends the app `GET <http_path>` when the path goes on.
            let app_path = p.http_path.as_deref().unwrap_or("");
            (
                SocketAddr::new(ep.address, defaults.sidecar_health_port),
                Some(format!("/app-health/{port}{app_path}")),
            )
        } else {
            (SocketAddr::new(ep.address, port.get()), p.http_path.clone())
        };
        out.insert(
            (name.clone(), ep.address),
            Probe {
                target,
                http_path,
                interval,
                timeout: p.timeout.unwrap_or(defaults.timeout).min(interval),
                unhealthy_threshold: p
                    .unhealthy_threshold
                    .unwrap_or(defaults.unhealthy_threshold),
                healthy_threshold: p.healthy_threshold.unwrap_or(defaults.healthy_threshold),
                via_sidecar,
            },
        );
    }
    out
}

/// An endpoint's health as checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Served: passing, or not failed enough yet (new endpoints start here).
    Healthy,
    /// Withdrawn from the proxies.
    Unhealthy,
}

/// One checked endpoint's record.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointHealth {
    pub status: Status,
    /// The check in force.
    pub check: Probe,
    /// Failures in a row (0 after a pass).
    pub consecutive_failures: u32,
    /// Passes in a row (0 after a failure).
    pub consecutive_successes: u32,
    /// Checks done, and how many failed.
    pub checks_total: u64,
    pub failures_total: u64,
    /// When the last check finished (RFC 3339), and what the last failure was.
    pub last_check: Option<String>,
    pub last_error: Option<String>,
    /// When the status last changed (or the check started).
    pub since: String,
}

impl EndpointHealth {
    fn new(check: Probe) -> Self {
        EndpointHealth {
            status: Status::Healthy,
            check,
            consecutive_failures: 0,
            consecutive_successes: 0,
            checks_total: 0,
            failures_total: 0,
            last_check: None,
            last_error: None,
            since: now(),
        }
    }

    /// Records one result; `true` when the status changed.
    fn record(&mut self, result: Result<(), String>) -> bool {
        self.checks_total += 1;
        self.last_check = Some(now());
        let before = self.status;
        match result {
            Ok(()) => {
                self.consecutive_failures = 0;
                self.consecutive_successes = self.consecutive_successes.saturating_add(1);
                if self.status == Status::Unhealthy
                    && self.consecutive_successes >= self.check.healthy_threshold.get()
                {
                    self.status = Status::Healthy;
                }
            }
            Err(e) => {
                self.failures_total += 1;
                self.consecutive_successes = 0;
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.last_error = Some(e);
                if self.status == Status::Healthy
                    && self.consecutive_failures >= self.check.unhealthy_threshold.get()
                {
                    self.status = Status::Unhealthy;
                }
            }
        }
        if self.status != before {
            self.since = now();
            true
        } else {
            false
        }
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Every checked endpoint's health, shared by the checks, the merge loop, the API and
/// the metrics; `changed` wakes the merge loop when an endpoint's status flips.
#[derive(Debug, Default)]
pub struct HealthTable {
    entries: Mutex<HashMap<(Name, IpAddr), EndpointHealth>>,
    changed: Notify,
}

impl HealthTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<(Name, IpAddr), EndpointHealth>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `address` of `service` is withdrawn.
    pub fn is_withdrawn(&self, service: &Name, address: IpAddr) -> bool {
        self.lock()
            .get(&(service.clone(), address))
            .is_some_and(|h| h.status == Status::Unhealthy)
    }

    /// The record of `address` of `service`, when it is checked.
    pub fn get(&self, service: &Name, address: IpAddr) -> Option<EndpointHealth> {
        self.lock().get(&(service.clone(), address)).cloned()
    }

    /// Every record.
    pub fn all(&self) -> Vec<((Name, IpAddr), EndpointHealth)> {
        let mut v: Vec<_> = self
            .lock()
            .iter()
            .map(|(k, h)| (k.clone(), h.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Resolves when an endpoint's status has changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Records a result for `key` if it is still checked with `probe`.
    fn record(&self, key: &(Name, IpAddr), probe: &Probe, result: Result<(), String>) {
        let flipped = {
            let mut entries = self.lock();
            let Some(h) = entries.get_mut(key).filter(|h| h.check == *probe) else {
                return;
            };
            let flipped = h.record(result);
            if flipped {
                match h.status {
                    Status::Unhealthy => tracing::warn!(
                        service = %key.0, endpoint = %key.1,
                        error = h.last_error.as_deref().unwrap_or(""),
                        failures = h.consecutive_failures,
                        "endpoint failed its health checks: withdrawn"
                    ),
                    Status::Healthy => tracing::info!(
                        service = %key.0, endpoint = %key.1,
                        passes = h.consecutive_successes,
                        "endpoint passes its health checks again: restored"
                    ),
                }
            }
            flipped
        };
        if flipped {
            self.changed.notify_one();
        }
    }
}

/// Runs one task per checked endpoint.
#[derive(Debug)]
pub struct Checker {
    table: Arc<HealthTable>,
    tasks: HashMap<(Name, IpAddr), (Probe, JoinHandle<()>)>,
}

impl Checker {
    /// No checks yet.
    pub fn new(table: Arc<HealthTable>) -> Self {
        Checker {
            table,
            tasks: HashMap::new(),
        }
    }

    /// Checks exactly `wanted`: new endpoints start (healthy), endpoints gone stop
    /// and are forgotten, and an endpoint whose check changed restarts its count.
    pub fn set(&mut self, wanted: BTreeMap<(Name, IpAddr), Probe>) {
        self.tasks.retain(|key, (probe, task)| {
            let keep = wanted.get(key) == Some(probe);
            if !keep {
                task.abort();
            }
            keep
        });
        {
            let mut entries = self.table.lock();
            entries.retain(|key, _| self.tasks.contains_key(key));
            for (key, probe) in &wanted {
                if !self.tasks.contains_key(key) {
                    entries.insert(key.clone(), EndpointHealth::new(probe.clone()));
                }
            }
        }
        for (key, probe) in wanted {
            if self.tasks.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(run(self.table.clone(), key.clone(), probe.clone()));
            self.tasks.insert(key, (probe, task));
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        for (_, task) in self.tasks.values() {
            task.abort();
        }
    }
}

async fn run(table: Arc<HealthTable>, key: (Name, IpAddr), probe: Probe) {
    // Spread the first checks over the interval, so that many endpoints added at once
    // are not all dialled in the same instant.
    let spread = u64::try_from(probe.interval.as_millis()).unwrap_or(u64::MAX);
    let jitter = Duration::from_millis(hash(&key) % spread.max(1));
    tokio::time::sleep(jitter.min(probe.interval / 4)).await;
    let mut ticks = tokio::time::interval(probe.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let result = match tokio::time::timeout(probe.timeout, check_inner(&probe)).await {
            Err(_) if probe.via_sidecar => {
                tracing::debug!(service = %key.0, endpoint = %key.1, "health check: the sidecar did not answer in time; inconclusive");
                continue;
            }
            Err(_) => Err(timed_out(&probe)),
            Ok(result) => result,
        };
        tracing::trace!(service = %key.0, endpoint = %key.1, ?result, "health check");
        table.record(&key, &probe, result);
    }
}

fn hash(key: &(Name, IpAddr)) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// One check: `Ok` when it passes, else what went wrong.
pub async fn check(probe: &Probe) -> Result<(), String> {
    match tokio::time::timeout(probe.timeout, check_inner(probe)).await {
        Ok(result) => result,
        Err(_) => Err(timed_out(probe)),
    }
}

fn timed_out(probe: &Probe) -> String {
    format!(
        "timed out after {}",
        humantime::format_duration(probe.timeout)
    )
}

async fn check_inner(probe: &Probe) -> Result<(), String> {
    let mut conn = TcpStream::connect(probe.target)
        .await
        .map_err(|e| format!("connect {}: {e}", probe.target))?;
    let Some(path) = &probe.http_path else {
        return Ok(());
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: weft-health-check\r\nConnection: close\r\n\r\n",
        probe.target
    );
    conn.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send GET {path}: {e}"))?;
    // The status line is all that matters; read until its end (or 1 KiB).
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 1024 {
        let n = conn
            .read(&mut chunk)
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().next().unwrap_or("");
    let code = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(c) if (200..300).contains(&c) => Ok(()),
        Some(c) => {
            // Why, in the answer's first body line: a sidecar's `/app-health` says
            // which app port failed and how, which is what an operator acts on.
            let reason = tokio::time::timeout(REASON_WAIT, body_first_line(&mut conn, buf))
                .await
                .ok()
                .flatten();
            Err(match reason {
                Some(r) => format!("GET {path}: status {c}: {r}"),
                None => format!("GET {path}: status {c}"),
            })
        }
        None => Err(format!("GET {path}: not an HTTP response: {line:?}")),
    }
}

/// How long a failed check waits for the answer's body, to say why.
const REASON_WAIT: Duration = Duration::from_millis(200);
/// The most of a failed answer read (head and body), and of its reason kept.
const REASON_READ_LIMIT: usize = 4096;
const REASON_MAX_CHARS: usize = 200;

/// The first non-empty line of the body of the answer begun in `buf` (read on from
/// `conn`, bounded), if there is one.
async fn body_first_line(conn: &mut TcpStream, mut buf: Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 512];
    let body_line = |buf: &[u8]| -> Option<String> {
        let start = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let body = &buf[start..];
        let end = body.iter().position(|&b| b == b'\n')?;
        Some(String::from_utf8_lossy(&body[..end]).trim().to_owned())
    };
    loop {
        if let Some(line) = body_line(&buf) {
            return (!line.is_empty()).then(|| line.chars().take(REASON_MAX_CHARS).collect());
        }
        if buf.len() >= REASON_READ_LIMIT {
            return None;
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                // The body ended without a newline: what there is of it.
                let start = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
                let line = String::from_utf8_lossy(&buf[start..]).trim().to_owned();
                return (!line.is_empty()).then(|| line.chars().take(REASON_MAX_CHARS).collect());
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::merge;
    use crate::meshfile::parse;
    use crate::model::Registration;
    use crate::source::Contribution;
    use tokio::net::TcpListener;

    fn probe(target: SocketAddr, path: Option<&str>) -> Probe {
        Probe {
            target,
            http_path: path.map(str::to_owned),
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(200),
            unhealthy_threshold: NonZeroU32::new(2).expect("nonzero"),
            healthy_threshold: NonZeroU32::MIN,
            via_sidecar: false,
        }
    }

    #[test]
    fn thresholds() {
        let mut h = EndpointHealth::new(probe("127.0.0.1:1".parse().expect("addr"), None));
        assert!(!h.record(Err("x".into())));
        assert_eq!(h.status, Status::Healthy, "one failure is not enough");
        assert!(!h.record(Ok(())));
        assert!(!h.record(Err("x".into())));
        assert!(h.record(Err("y".into())), "two in a row");
        assert_eq!(h.status, Status::Unhealthy);
        assert_eq!(h.last_error.as_deref(), Some("y"));
        assert!(h.record(Ok(())), "healthy_threshold 1");
        assert_eq!((h.checks_total, h.failures_total), (5, 3));
    }

    #[test]
    fn which_endpoints_are_checked_and_how() {
        let file = parse(
            "m",
            "services:
  plain: { vip: 10.0.0.1, ports: [{ port: 80, target_port: 8080 }], endpoints: [127.0.0.2] }
  web:
    vip: 10.0.0.2
    ports: [{ port: 80, target_port: 8081 }]
    endpoints: [127.0.0.3]
    policy: { health_check: { interval: 2s, http_path: /healthz, port: 9000 } }
  quiet:
    vip: 10.0.0.3
    ports: [{ port: 80 }]
    policy: { health_check: { enabled: false } }
",
        )
        .expect("valid");
        let reg = |svc: &str, ip: &str, port: Option<u16>| Registration {
            service: Name::try_from(svc).expect("name"),
            address: ip.parse().expect("ip"),
            port: port.and_then(std::num::NonZeroU16::new),
            weight: NonZeroU32::MIN,
            labels: BTreeMap::new(),
        };
        let regs = Contribution {
            services: BTreeMap::new(),
            not_ready: BTreeMap::new(),
            registrations: vec![
                reg("plain", "127.0.0.4", Some(8080)),
                reg("plain", "127.0.0.5", None),
                reg("quiet", "127.0.0.6", None),
            ],
        };
        let files = Contribution::services(file.services);
        let catalog = merge([(SourceKind::File, &files), (SourceKind::Registry, &regs)]);
        let d = Defaults::default();
        let p = probes(&catalog, &d, &BTreeSet::new());
        let keys: Vec<String> = p.keys().map(|(n, ip)| format!("{n}/{ip}")).collect();
        assert_eq!(
            keys,
            ["plain/127.0.0.4", "plain/127.0.0.5", "web/127.0.0.3"],
            "registered ones, and every endpoint of a service whose policy asks"
        );
        let web = p.values().last().expect("web");
        assert_eq!(web.target.to_string(), "127.0.0.3:9000");
        assert_eq!(web.http_path.as_deref(), Some("/healthz"));
        assert_eq!(web.interval, Duration::from_secs(2));
        assert_eq!(web.timeout, d.timeout);
        assert!(p.values().all(|p| p.target.port() != 80));

        let all = probes(
            &catalog,
            &Defaults {
                scope: Scope::All,
                ..d.clone()
            },
            &BTreeSet::new(),
        );
        assert_eq!(
            all.len(),
            4,
            "plus the file's endpoint of plain; never quiet's"
        );
        let off = probes(
            &catalog,
            &Defaults {
                scope: Scope::Off,
                ..d.clone()
            },
            &BTreeSet::new(),
        );
        assert_eq!(off.len(), 1, "the policy still applies");

        // Meshed: the file's endpoint of plain is checked through its sidecar, and so
        // is web's, with its own policy's port, path and interval (a check of the pod
        // from outside would reach the sidecar); `off` still checks nothing by default.
        let meshed: BTreeSet<IpAddr> = ["127.0.0.2", "127.0.0.3"]
            .iter()
            .map(|a| a.parse().expect("ip"))
            .collect();
        let p = probes(&catalog, &d, &meshed);
        let plain = &p[&(
            Name::try_from("plain").expect("name"),
            meshed_ip("127.0.0.2"),
        )];
        assert_eq!(plain.target.to_string(), "127.0.0.2:15020");
        assert_eq!(plain.http_path.as_deref(), Some("/app-health/8080"));
        let web = &p[&(Name::try_from("web").expect("name"), meshed_ip("127.0.0.3"))];
        assert_eq!(web.target.to_string(), "127.0.0.3:15020");
        assert_eq!(web.http_path.as_deref(), Some("/app-health/9000/healthz"));
        assert_eq!(web.interval, Duration::from_secs(2));
        assert!(web.via_sidecar);
        let off = probes(
            &catalog,
            &Defaults {
                scope: Scope::Off,
                ..d
            },
            &meshed,
        );
        assert_eq!(off.len(), 1, "the policy only");
    }

    fn meshed_ip(a: &str) -> IpAddr {
        a.parse().expect("ip")
    }

    #[tokio::test]
    async fn tcp_and_http_checks() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]);
                    let (status, body) = if req.starts_with("GET /ok ") {
                        ("200 OK", "")
                    } else {
                        ("503 No", "app port 8080: connect_refused\n")
                    };
                    let _ = s
                        .write_all(
                            format!(
                                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                });
            }
        });
        assert_eq!(check(&probe(addr, None)).await, Ok(()));
        assert_eq!(check(&probe(addr, Some("/ok"))).await, Ok(()));
        let e = check(&probe(addr, Some("/bad"))).await.expect_err("503");
        assert_eq!(e, "GET /bad: status 503: app port 8080: connect_refused");
        // Nothing listens on a port just released.
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let gone = closed.local_addr().expect("addr");
        drop(closed);
        let e = check(&probe(gone, None)).await.expect_err("refused");
        assert!(e.contains("connect"), "{e}");
    }

    #[tokio::test]
    async fn the_checker_withdraws_and_restores() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        let table = Arc::new(HealthTable::default());
        let mut checker = Checker::new(table.clone());
        let key = (Name::try_from("a").expect("name"), addr.ip());
        let mut p = probe(addr, None);
        p.interval = Duration::from_millis(50);
        p.timeout = Duration::from_millis(50);
        checker.set(BTreeMap::from([(key.clone(), p.clone())]));
        assert!(!table.is_withdrawn(&key.0, key.1), "starts healthy");
        tokio::time::timeout(Duration::from_secs(5), table.changed())
            .await
            .expect("withdrawn in time");
        assert!(table.is_withdrawn(&key.0, key.1));
        let _l = TcpListener::bind(addr).await.expect("rebind");
        tokio::time::timeout(Duration::from_secs(5), table.changed())
            .await
            .expect("restored in time");
        assert!(!table.is_withdrawn(&key.0, key.1));
        checker.set(BTreeMap::new());
        assert!(table.all().is_empty(), "forgotten");
    }

    #[tokio::test]
    async fn a_busy_sidecar_is_inconclusive_not_a_failure() {
        // Accepts and never answers, as a saturated sidecar may for a while.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let held = Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = held.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                keep.lock().expect("lock").push(s);
            }
        });
        let table = Arc::new(HealthTable::default());
        let mut checker = Checker::new(table.clone());
        let key = (Name::try_from("a").expect("name"), addr.ip());
        let mut p = probe(addr, Some("/app-health/8080"));
        p.interval = Duration::from_millis(50);
        p.timeout = Duration::from_millis(50);
        p.via_sidecar = true;
        checker.set(BTreeMap::from([(key.clone(), p)]));
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(held.lock().expect("lock").len() >= 3, "checked repeatedly");
        let h = table.get(&key.0, key.1).expect("checked");
        assert!(!table.is_withdrawn(&key.0, key.1), "{h:?}");
        assert_eq!(h.failures_total, 0, "timeouts are not failures: {h:?}");
        checker.set(BTreeMap::new());
    }
}
