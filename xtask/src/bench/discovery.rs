//! `cargo xtask bench-discovery`: how long a mesh-file edit takes to reach every
//! proxy. A benchmark (ARCHITECTURE.md, Benchmark method): it prints numbers and
//! asserts nothing about time.
//!
//! Set-up: release binaries; ONE throwaway network namespace — the node namespace of
//! a weft-e2e [`Mesh`], with no pods — holding a weft-controller over a generated mesh
//! file of 1,000 services × 10 endpoints and `--proxies` (20) weft-proxy processes subscribed to it,
//! each with its own ports. VIPs (10.96.0.0/16) and endpoints (10.128.0.0/14) exist
//! only in the file: nothing routes to them and no traffic flows but loopback gRPC and
//! HTTP inside the namespace.
//!
//! Method: each round edits one random service (adds or removes an endpoint), writes
//! the file atomically (a temporary file renamed over it) and notes the wall-clock
//! time. Every proxy records on `/discovery` the version it applied and when
//! (`applied_at_unix_ms`), so a sample is that time minus the write time, whenever the
//! bench reads it. The bench waits until the controller's `/v1/status` shows every
//! proxy's Ack of the new version (one small answer), then reads each proxy's
//! `/discovery` once: reading competes as little as possible with the proxies still
//! applying. A last round edits 100 services at once.
//!
//! Output: p50 / p99 / max over every proxy × round sample, split into
//! file → controller (the controller's polling and parsing, from `last_reload` on its
//! `/v1/status`) and controller → proxy (push and apply), and the RSS of the controller
//! and of one proxy after the rounds. The controller's RSS right after the rounds
//! depends on whether its allocator trim has come yet, so its peaks (VmHWM) are
//! reported too: over the initial sync, and over the edit rounds (the mark is reset
//! between the two through `/proc/PID/clear_refs`).
//!
//! Bounds and clean-up: an overall timeout (`--timeout`, from after the build). The
//! namespace, processes and files go when the [`Mesh`] drops: on success, on error, on
//! panic, and on Ctrl-C or SIGTERM, which are caught and turned into an error. Only a
//! SIGKILL of xtask itself could leave a `wf*-node` namespace behind.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use weft_localmesh::{Mesh, Pod, PodProc, ProcSpec};

const SERVICES: usize = 1_000;
const ENDPOINTS: u8 = 10;
/// Services changed by the last, wide round.
const WIDE_EDIT: usize = 100;
const CONTROLLER_GRPC: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15010);
const CONTROLLER_HTTP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15014);
/// Proxy `i` uses ports `PORT_BASE + 10 i` and up: outbound, inbound, admin, metrics.
const PORT_BASE: u16 = 20_000;
/// How often the controller's status is read while waiting for a new version (small
/// answers, so frequent reads cost nothing measurable).
const STATUS_POLL: Duration = Duration::from_millis(10);
/// Pause between reads of the proxies still behind.
const SWEEP_PAUSE: Duration = Duration::from_millis(50);

/// `cargo xtask bench-discovery` options.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Rounds of one-service edits.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Proxies subscribed (each its own process and ports).
    #[arg(long, default_value_t = 20)]
    proxies: usize,
    /// The controller's mesh-file polling interval, where inotify is unavailable
    /// (with inotify it plays no part).
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// Give up, and clean up, after this long (not counting the build).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Seed of the random choice of services (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
}

/// Builds the binaries, runs the benchmark in its own namespace, prints the numbers.
pub fn bench_discovery(opts: &Options) -> Result<()> {
    let bins = build_release()?;
    crate::interrupt::catch_signals()?;
    let deadline = Deadline(Instant::now() + opts.timeout);
    let seed = opts.seed.unwrap_or_else(clock_seed);
    let mesh = Mesh::new().context("creating the benchmark's network namespace")?;
    let namespace = mesh.node().netns_name().to_owned();
    let result = run(&mesh, &bins, opts, seed, &deadline);
    // The processes' logs explain a failure; after Ctrl-C they are only noise.
    if result.is_err() && !crate::interrupt::interrupted() {
        eprint!("{}", mesh.logs_report());
    }
    // Clean up before reporting, so what is printed last is true of the host.
    drop(mesh);
    eprintln!("bench-discovery: namespace {namespace} and its processes removed");
    result?.print(opts, seed);
    Ok(())
}

/// Where the release binaries are.
struct Bins {
    controller: PathBuf,
    proxy: PathBuf,
}

fn build_release() -> Result<Bins> {
    let dir = crate::build_release_as_shipped()?;
    Ok(Bins {
        controller: dir.join("weft-controller"),
        proxy: dir.join("weft-proxy"),
    })
}

/// The overall time limit; every wait checks it, and the signal flag.
struct Deadline(Instant);

impl Deadline {
    fn check(&self, waiting_for: &str) -> Result<()> {
        if crate::interrupt::interrupted() {
            bail!("interrupted while waiting for {waiting_for}");
        }
        if Instant::now() > self.0 {
            bail!("overall timeout reached while waiting for {waiting_for}");
        }
        Ok(())
    }
}

fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// SplitMix64: enough randomness to pick services, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `k` distinct indices below `n` (partial Fisher-Yates).
    fn distinct(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..k.min(n) {
            let j = i + (self.next() % (n - i) as u64) as usize;
            all.swap(i, j);
        }
        all.truncate(k);
        all
    }
}

/// The generated mesh: how many endpoints each service has.
struct MeshModel {
    endpoints: Vec<u8>,
}

impl MeshModel {
    fn new() -> Self {
        MeshModel {
            endpoints: vec![ENDPOINTS; SERVICES],
        }
    }

    /// Adds an endpoint to service `i`, or removes the one added before, so each
    /// edit changes exactly that service.
    fn edit(&mut self, i: usize) {
        self.endpoints[i] = if self.endpoints[i] > ENDPOINTS {
            ENDPOINTS
        } else {
            ENDPOINTS + 1
        };
    }

    /// The mesh file: service `i` has VIP 10.96.(i/250).(i%250+1) and endpoints
    /// 10.(128+i/256).(i%256).(1..).
    fn render(&self) -> String {
        let mut out = String::from("services:\n");
        for (i, &n) in self.endpoints.iter().enumerate() {
            let endpoints: Vec<String> = (1..=n)
                .map(|j| format!("10.{}.{}.{j}", 128 + i / 256, i % 256))
                .collect();
            out.push_str(&format!(
                "  svc-{i:04}: {{ vip: 10.96.{}.{}, ports: [{{ port: 80, target_port: 8080, protocol: tcp }}], endpoints: [{}] }}\n",
                i / 250,
                i % 250 + 1,
                endpoints.join(", ")
            ));
        }
        out
    }

    /// Writes the file the way tools do: a temporary file renamed over it, so the
    /// controller never reads a half-written file. Returns its size.
    fn write(&self, path: &Path) -> Result<usize> {
        let text = self.render();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(text.len())
    }
}

/// One running proxy.
struct Proxy {
    proc: PodProc,
    admin: SocketAddr,
}

/// A `/routes` reading: the version and when it was applied.
#[derive(Debug, Clone, Copy)]
struct Applied {
    version: u64,
    at_unix_ms: i64,
}

fn read_json(node: &Pod, addr: SocketAddr, path: &str) -> Result<serde_json::Value> {
    let (code, body) = node.http_get_as_operator(addr, path)?;
    if code != 200 {
        bail!("GET {addr}{path}: {code} {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("GET {addr}{path}: not JSON"))
}

/// What a proxy's `/routes` says it applied, if anything yet.
fn proxy_applied(node: &Pod, proxy: &Proxy) -> Result<Option<Applied>> {
    if let Some(status) = proxy.proc.try_wait() {
        bail!("proxy {} exited: {status}", proxy.proc.name());
    }
    let d = read_json(node, proxy.admin, "/discovery")?;
    Ok(d["version"]
        .as_u64()
        .zip(d["applied_at_unix_ms"].as_i64())
        .map(|(version, at_unix_ms)| Applied {
            version,
            at_unix_ms,
        }))
}

/// The controller's version and when it loaded it (`/v1/status`).
fn controller_applied(node: &Pod, controller: &PodProc) -> Result<Applied> {
    if let Some(status) = controller.try_wait() {
        bail!("weft-controller exited: {status}");
    }
    let status = read_json(node, CONTROLLER_HTTP, "/v1/status")?;
    let version = status["version"]
        .as_u64()
        .context("/v1/status without a version")?;
    let loaded = status["last_reload"]
        .as_str()
        .context("/v1/status without last_reload")?;
    let at = humantime::parse_rfc3339(loaded)
        .with_context(|| format!("last_reload {loaded:?}"))?
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Ok(Applied {
        version,
        at_unix_ms: at,
    })
}

fn start_controller(node: &Pod, bins: &Bins, file: &Path, poll: Duration) -> Result<PodProc> {
    let poll = humantime::format_duration(poll).to_string();
    let argv: Vec<String> = vec![
        bins.controller.display().to_string(),
        "--config".into(),
        file.display().to_string(),
        "--grpc-listen".into(),
        CONTROLLER_GRPC.to_string(),
        "--http-listen".into(),
        CONTROLLER_HTTP.to_string(),
        "--poll-interval".into(),
        poll,
        "--api-tokens".into(),
        node.credentials().token_file().display().to_string(),
        "--log".into(),
        "warn".into(),
    ];
    node.spawn(ProcSpec::new(argv).name("weft-controller"))
}

/// Proxy `i`: service `bench-NN`, its own four ports, subscribed to the controller.
/// No capture is installed: the proxy only has to follow discovery here.
fn start_proxy(node: &Pod, bins: &Bins, i: usize) -> Result<Proxy> {
    let base = PORT_BASE + 10 * i as u16;
    let name = format!("bench-{i:02}");
    let admin = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), base + 2);
    let metrics = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), base + 3);
    let token = node.credentials().issue(&name, &[&name], None)?;
    let argv: Vec<String> = vec![
        bins.proxy.display().to_string(),
        "--service".into(),
        name.clone(),
        "--proxy-id".into(),
        name.clone(),
        "--controller".into(),
        format!("http://{CONTROLLER_GRPC}"),
        "--controller-token-file".into(),
        token.display().to_string(),
        "--outbound-port".into(),
        base.to_string(),
        "--inbound-port".into(),
        (base + 1).to_string(),
        // Many proxies share the namespace, and no traffic flows: no tunnel.
        "--tunnel-port".into(),
        "0".into(),
        "--admin-listen".into(),
        admin.to_string(),
        "--metrics-listen".into(),
        metrics.to_string(),
        "--log".into(),
        "warn".into(),
    ];
    let proc = node.spawn(ProcSpec::new(argv).name(&name))?;
    Ok(Proxy { proc, admin })
}

/// Waits until the controller serves a version above `above`.
fn wait_controller(
    node: &Pod,
    controller: &PodProc,
    above: u64,
    deadline: &Deadline,
) -> Result<Applied> {
    loop {
        deadline.check("the controller's new version")?;
        // Connection refused while it starts up: keep waiting.
        if let Ok(now) = controller_applied(node, controller) {
            if now.version > above {
                return Ok(now);
            }
        }
        std::thread::sleep(STATUS_POLL);
    }
}

/// Waits until the controller's `/v1/status` shows `count` proxies that applied
/// `version` (their Acks).
fn wait_acks(
    node: &Pod,
    controller: &PodProc,
    version: u64,
    count: usize,
    deadline: &Deadline,
) -> Result<()> {
    loop {
        deadline.check(&format!("every proxy to acknowledge version {version}"))?;
        if let Some(status) = controller.try_wait() {
            bail!("weft-controller exited: {status}");
        }
        let status = read_json(node, CONTROLLER_HTTP, "/v1/status")?;
        let applied = status["proxies"].as_array().map_or(0, |ps| {
            ps.iter()
                .filter(|p| p["applied_version"].as_u64() >= Some(version))
                .count()
        });
        if applied >= count {
            return Ok(());
        }
        std::thread::sleep(STATUS_POLL);
    }
}

/// Waits until every proxy has applied `version`; returns each one's applied time.
fn wait_proxies(
    node: &Pod,
    proxies: &[Proxy],
    version: u64,
    deadline: &Deadline,
) -> Result<Vec<i64>> {
    let mut applied: Vec<Option<i64>> = vec![None; proxies.len()];
    loop {
        for (slot, proxy) in applied.iter_mut().zip(proxies) {
            if slot.is_some() {
                continue;
            }
            deadline.check(&format!("{} to apply version {version}", proxy.proc.name()))?;
            // Not listening yet (start-up): keep waiting; a dead proxy is an error.
            match proxy_applied(node, proxy) {
                Ok(Some(a)) if a.version >= version => *slot = Some(a.at_unix_ms),
                Err(e) if proxy.proc.try_wait().is_some() => return Err(e),
                _ => {}
            }
        }
        if applied.iter().all(Option::is_some) {
            return Ok(applied.into_iter().flatten().collect());
        }
        std::thread::sleep(SWEEP_PAUSE);
    }
}

/// One edit's timings, in ms after the write.
struct Round {
    controller_ms: i64,
    proxy_ms: Vec<i64>,
}

/// The running set-up, between rounds.
struct Bench<'a> {
    node: &'a Pod,
    controller: PodProc,
    proxies: Vec<Proxy>,
    file: PathBuf,
    model: MeshModel,
    /// The version every proxy has.
    version: u64,
    rng: Rng,
    poll_interval: Duration,
    deadline: &'a Deadline,
}

impl Bench<'_> {
    /// Edits `count` random services, writes the file, and waits until every proxy
    /// has the result.
    ///
    /// The write comes after a random pause of up to one polling interval: rounds
    /// otherwise fall into step with the controller's polling (each starts a fixed
    /// time after the last reload) and every write would land at the same point of
    /// the interval, which skews file → controller.
    fn round(&mut self, count: usize) -> Result<Round> {
        let interval_ms = self.poll_interval.as_millis().max(1) as u64;
        std::thread::sleep(Duration::from_millis(self.rng.next() % interval_ms));
        for i in self.rng.distinct(SERVICES, count) {
            self.model.edit(i);
        }
        self.model.write(&self.file)?;
        let written = unix_ms_now();
        let at_controller =
            wait_controller(self.node, &self.controller, self.version, self.deadline)?;
        wait_acks(
            self.node,
            &self.controller,
            at_controller.version,
            self.proxies.len(),
            self.deadline,
        )?;
        let applied = wait_proxies(
            self.node,
            &self.proxies,
            at_controller.version,
            self.deadline,
        )?;
        self.version = at_controller.version;
        Ok(Round {
            controller_ms: at_controller.at_unix_ms - written,
            proxy_ms: applied.iter().map(|at| at - written).collect(),
        })
    }
}

/// Samples of a set of rounds.
#[derive(Default)]
struct Samples {
    rounds: usize,
    /// Write → proxy applied, one per proxy per round.
    total: Vec<i64>,
    /// Write → controller version, one per round.
    controller: Vec<i64>,
    /// Controller version → proxy applied, one per proxy per round.
    push: Vec<i64>,
}

impl Samples {
    fn add(&mut self, round: &Round) {
        self.rounds += 1;
        self.controller.push(round.controller_ms);
        self.total.extend(&round.proxy_ms);
        self.push
            .extend(round.proxy_ms.iter().map(|ms| ms - round.controller_ms));
    }
}

/// Everything printed at the end.
struct Report {
    file_bytes: usize,
    initial_sync: Duration,
    single: Samples,
    wide: Samples,
    controller_rss_kib: Option<u64>,
    /// The controller's RSS after [`AT_REST`] without an edit: what it keeps, once
    /// it has given back what the pushes left (weft_runtime::memory). Right after
    /// the rounds the figure depends on whether that trim has come yet (49 to 117
    /// MiB between runs of the same command).
    controller_rest_rss_kib: Option<u64>,
    proxy_rss_kib: Option<u64>,
    /// The controller's peak RSS while the proxies subscribed and took their
    /// snapshots, and over the edit rounds after that.
    controller_peak_sync_kib: Option<u64>,
    controller_peak_edits_kib: Option<u64>,
    /// The controller's CPU time (user + system) per 1-service edit round, and for
    /// the wide one: parsing, merging, diffing and pushing to every proxy.
    controller_cpu_ms_per_edit: Option<f64>,
    controller_cpu_ms_wide: Option<f64>,
    /// The same for all the proxies together (decoding, applying, acknowledging):
    /// on a machine of few cores, what bounds how fast the last proxy can apply.
    proxies_cpu_ms_per_edit: Option<f64>,
    proxies_cpu_ms_wide: Option<f64>,
}

fn run(mesh: &Mesh, bins: &Bins, opts: &Options, seed: u64, deadline: &Deadline) -> Result<Report> {
    let node = mesh.node();
    let file = mesh.run_dir().join("mesh.yaml");
    let model = MeshModel::new();
    let file_bytes = model.write(&file)?;
    let controller = start_controller(node, bins, &file, opts.poll_interval)?;
    let version = wait_controller(node, &controller, 0, deadline)?.version;

    let started = Instant::now();
    let proxies = (0..opts.proxies)
        .map(|i| start_proxy(node, bins, i))
        .collect::<Result<Vec<_>>>()?;
    wait_proxies(node, &proxies, version, deadline)?;
    let initial_sync = started.elapsed();
    eprintln!(
        "bench-discovery: {} proxies synced at version {version} in {} ms; {} rounds to go",
        opts.proxies,
        initial_sync.as_millis(),
        opts.rounds + 1
    );

    let mut bench = Bench {
        node,
        controller,
        proxies,
        file,
        model,
        version,
        rng: Rng(seed),
        poll_interval: opts.poll_interval,
        deadline,
    };
    let controller_peak_sync_kib = peak_rss_kib(bench.controller.pid());
    reset_peak_rss(bench.controller.pid());
    let cpu_before = cpu_ms(bench.controller.pid());
    let proxies_before = proxies_cpu_ms(&bench.proxies);
    let mut single = Samples::default();
    for _ in 0..opts.rounds {
        single.add(&bench.round(1)?);
    }
    let single_cpu = cpu_ms(bench.controller.pid());
    let proxies_single = proxies_cpu_ms(&bench.proxies);
    let mut wide = Samples::default();
    wide.add(&bench.round(WIDE_EDIT)?);
    let wide_cpu = cpu_ms(bench.controller.pid());
    let proxies_wide = proxies_cpu_ms(&bench.proxies);
    let per = |a: Option<u64>, b: Option<u64>, n: usize| {
        Some((b?.saturating_sub(a?)) as f64 / n.max(1) as f64)
    };

    let controller_rss_kib = rss_kib(bench.controller.pid());
    let controller_peak_edits_kib = peak_rss_kib(bench.controller.pid());
    std::thread::sleep(AT_REST);
    Ok(Report {
        controller_rest_rss_kib: rss_kib(bench.controller.pid()),
        file_bytes,
        initial_sync,
        single,
        wide,
        controller_rss_kib,
        controller_cpu_ms_per_edit: per(cpu_before, single_cpu, opts.rounds),
        controller_cpu_ms_wide: per(single_cpu, wide_cpu, 1),
        proxies_cpu_ms_per_edit: per(proxies_before, proxies_single, opts.rounds),
        proxies_cpu_ms_wide: per(proxies_single, proxies_wide, 1),
        proxy_rss_kib: bench.proxies.first().and_then(|p| rss_kib(p.proc.pid())),
        controller_peak_sync_kib,
        controller_peak_edits_kib,
    })
}

/// How long the controller goes without an edit before its RSS at rest is read.
const AT_REST: Duration = Duration::from_secs(5);

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// VmHWM of `pid` (its peak RSS since start or the last [`reset_peak_rss`]), in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Starts `pid`'s VmHWM again from its current RSS (proc(5), clear_refs: 5). Only
/// the bench's own controller process is written to.
fn reset_peak_rss(pid: u32) {
    if let Err(e) = std::fs::write(format!("/proc/{pid}/clear_refs"), "5") {
        eprintln!("bench-discovery: could not reset the controller's peak RSS: {e}");
    }
}

/// A `/proc/PID/status` field given in kB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user + system) `pid` has used, in ms (from /proc/PID/stat, in clock
/// ticks of 10 ms: a coarse figure, meant over several rounds).
fn cpu_ms(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) close with ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 10)
}

/// CPU time all `proxies` have used together, in ms: from /proc/PID/schedstat (time
/// on a CPU, in ns), since summing 200 processes' 10 ms clock ticks adds up their
/// rounding.
fn proxies_cpu_ms(proxies: &[Proxy]) -> Option<u64> {
    let mut ns = 0;
    for proxy in proxies {
        let pid = proxy.proc.pid();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
        ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns / 1_000_000)
}

/// Nearest-rank percentile `p` (0-100) of sorted `v`.
fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(samples: &[i64]) -> String {
    let mut v = samples.to_vec();
    v.sort_unstable();
    format!(
        "p50 {:>4} ms   p99 {:>4} ms   max {:>4} ms   ({} samples)",
        percentile(&v, 50.0),
        percentile(&v, 99.0),
        v.last().copied().unwrap_or(0),
        v.len()
    )
}

fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "?".into())
}

impl Report {
    fn print(&self, opts: &Options, seed: u64) {
        let poll = humantime::format_duration(opts.poll_interval);
        println!(
            "bench-discovery: {SERVICES} services x {ENDPOINTS} endpoints ({} KiB mesh file), {} proxies, controller --poll-interval {poll} (inotify when available), seed {seed}",
            self.file_bytes / 1024,
            opts.proxies
        );
        println!(
            "initial snapshot: all proxies synced {} ms after the first was started",
            self.initial_sync.as_millis()
        );
        for (what, s) in [
            ("1-service edits", &self.single),
            (&*format!("{WIDE_EDIT}-service edit"), &self.wide),
        ] {
            println!("{what}, {} round(s), write -> proxy applied:", s.rounds);
            println!("  all proxies         {}", summary(&s.total));
            println!("  file -> controller  {}", summary(&s.controller));
            println!("  controller -> proxy {}", summary(&s.push));
        }
        println!(
            "RSS after the rounds: weft-controller {} (at rest {} later: {}), weft-proxy (bench-00) {}",
            mib(self.controller_rss_kib),
            humantime::format_duration(AT_REST),
            mib(self.controller_rest_rss_kib),
            mib(self.proxy_rss_kib)
        );
        println!(
            "weft-controller peak RSS (VmHWM): {} over the initial sync, {} over the edit rounds",
            mib(self.controller_peak_sync_kib),
            mib(self.controller_peak_edits_kib)
        );
        let ms = |v: Option<f64>| v.map_or_else(|| "?".to_owned(), |v| format!("{v:.0} ms"));
        println!(
            "controller CPU: {} per 1-service edit, {} for the {WIDE_EDIT}-service edit",
            ms(self.controller_cpu_ms_per_edit),
            ms(self.controller_cpu_ms_wide)
        );
        println!(
            "proxies' CPU, all {} together: {} per 1-service edit, {} for the {WIDE_EDIT}-service edit",
            opts.proxies,
            ms(self.proxies_cpu_ms_per_edit),
            ms(self.proxies_cpu_ms_wide)
        );
        println!(
            "rerun: cargo xtask bench-discovery --rounds {} --proxies {} --poll-interval {poll} --seed {seed}",
            opts.rounds, opts.proxies
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn edits_toggle_one_endpoint_and_render_valid_lines() {
        let mut m = MeshModel::new();
        m.edit(3);
        let text = m.render();
        let line = text.lines().nth(4).expect("service 3");
        assert!(line.starts_with("  svc-0003: { vip: 10.96.0.4,"), "{line}");
        assert!(line.contains("10.128.3.11"), "{line}");
        m.edit(3);
        assert!(!m.render().contains("10.128.3.11"));
        assert_eq!(Rng(1).distinct(SERVICES, WIDE_EDIT).len(), WIDE_EDIT);
    }
}
