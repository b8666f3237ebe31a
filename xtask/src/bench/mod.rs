//! `cargo xtask bench [--quick]`: weft against no proxy at all and against nginx and
//! haproxy in the same two positions, in one run, with the same load generator and
//! the same server (issue 8; the method is ARCHITECTURE.md, Benchmark method). A
//! benchmark prints numbers; it never fails on a time. It does fail when the numbers
//! cannot be trusted (see "Sanity checks").
//!
//! # Set-up
//!
//! A weft-e2e [`Mesh`]: pod `client` (10.211.0.2) and pod `server` (10.211.0.3) on the
//! node's bridge, each with a cgroup v2 of its own when the host has one (eBPF mode
//! needs it; the other setups do not care). The node runs weft-controller, whose mesh
//! file names the service `bench` (VIP 10.96.0.10, endpoint the server pod). The
//! server pod runs the app for the whole run: nginx returning a fixed 64-byte body
//! (HTTP/1.1 on 8080, h2c on 8081; its `stub_status` counts every request it saw),
//! `iperf3 -s` on 5201, and a banner server on 2525 that speaks first (see
//! [`banner`]). Release builds of weft-proxy, weft-init and weft-controller; the
//! load generator is oha (see [`load`]).
//!
//! Setups ([`setups`]), each two hops where proxied — client pod → server pod:
//! `direct`; `weft-iptables`; `weft-ebpf` (skipped with "not available: <reason>"
//! until `weft-init --mode ebpf` works here); `weft-ebpf-sockmap`, the same with
//! sk_msg on in the client pod (`--sockmap`); `nginx` and `haproxy` as a client-side
//! and a server-side reverse proxy with keep-alive upstream pools. One worker per
//! proxy: weft `--workers 1`, nginx `worker_processes 1`, haproxy `nbthread 1`.
//!
//! # Method
//!
//! Pinning (`taskset`): the load generator and the client-side proxy on CPU 0, the
//! app and the server-side proxy on CPU 1. Per setup and protocol (HTTP/1.1
//! keep-alive, h2c): a warm-up, a closed-loop maximum-throughput run, and open-loop
//! runs at fixed rates with coordinated-omission correction; then the connection
//! setup rate (closed loop, HTTP/1.1 with a new connection per request), a TCP bulk
//! transfer (iperf3, the receiver's throughput), the time to a server-first banner
//! (200 sequential connections: p50/p99, and the p50 added to `direct`'s in the same
//! round), and once per setup the proxies' RSS while 10,000 idle keep-alive
//! connections are open. Setups are interleaved over rounds (A B C A B C), every
//! setup started afresh each round, and the median over rounds is reported.
//!
//! # Sanity checks (they fail the run)
//!
//! - The app's request counter moved by exactly the number of responses the load
//!   generator reports, every one a 200, with no generator errors.
//! - For proxied setups, both proxies' request counters (weft's `/metrics`, nginx's
//!   `stub_status`, haproxy's stats CSV) moved by at least that number — a setup that
//!   bypassed its proxies cannot pass. For TCP: both proxies saw the connections.
//! - The banner run: every connection got a banner, byte for byte the one sent, and
//!   both proxies' connection counters for it moved by at least as many.
//! - The connection-rate run: what the generator dials (the app, or the client-side
//!   proxy) accepted at least one connection per request.
//! - `weft-ebpf-sockmap`: the client pod's sk_msg redirect counter moved.
//!
//! # Output
//!
//! `target/bench/results.json` (medians), `rounds.json` (every sample), `report.md`,
//! `throughput.png`, `latency.png`; the report is also printed.
//!
//! # Bounds and clean-up
//!
//! Every load is bounded in count and time and only targets the benchmark's own
//! namespaces; an overall timeout applies. SIGINT and SIGTERM are caught and turned
//! into an error, so the [`Mesh`] (namespaces, processes) and the pod cgroups are
//! removed on every exit but a SIGKILL.
//!
//! Layout:
//!
//! - [`setups`]: the pods, the shared app and controller, and bringing each of the six
//!   setups up and down;
//! - [`runs`]: what is measured against a running setup, in what order, over rounds,
//!   and the sanity checks on each run;
//! - [`counters`]: reading a running setup's request and connection counters and its
//!   proxies' CPU and RSS;
//! - [`configs`]: the setups' configuration files and ports;
//! - [`load`]: the load generators (oha, iperf3, the idle-connection holder);
//! - [`banner`]: the server-speaks-first app and its timing client;
//! - [`measure`]: parsing /proc CPU and RSS and the counters' formats;
//! - [`report`]: rows, medians, JSON and Markdown; [`plots`]: PNG; [`goals`]: the
//!   cost goals (issue 14) with PASS / MISS, in the report and `goals.json`;
//! - [`discovery`]: `cargo xtask bench-discovery`, a benchmark of its own.

mod banner;
mod configs;
mod counters;
pub mod discovery;
mod goals;
mod load;
mod measure;
mod plots;
mod report;
mod runs;
mod setups;

pub(crate) use crate::interrupt::interrupted;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use setups::{Bench, SetupKind};
// `cargo xtask soak` runs the same release binaries and load generator.
pub(crate) use load::parse_oha;
pub(crate) use setups::Bins;

/// `cargo xtask bench` options.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// A short run (one round, short loads): under 5 minutes on 2 cores.
    #[arg(long)]
    quick: bool,
    /// Rounds over all setups (default: 1 with --quick, 3 otherwise).
    #[arg(long)]
    rounds: Option<usize>,
    /// Only these setups (comma-separated names), e.g. `direct,weft-iptables`.
    #[arg(long, value_delimiter = ',')]
    setups: Vec<String>,
    /// Only these loads (comma-separated): `http1` and `h2` (warm-up, max and fixed
    /// rates), `conns` (new connection per request), `tcp` (bulk), `banner` (time to
    /// a server-first banner), `idle` (idle connections, round 1). Default: all. For
    /// profiling one row; a report of a subset is not comparable with a full one.
    #[arg(long, value_delimiter = ',')]
    loads: Vec<String>,
    /// Give up, and clean up, after this long (not counting builds and installs).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Internal: the idle-connection holder that the benchmark starts in the client
    /// pod (ADDR COUNT SECONDS GO).
    #[arg(long, hide = true, num_args = 4, value_names = ["ADDR", "COUNT", "SECONDS", "GO"])]
    hold_idle: Option<Vec<String>>,
    /// Internal: the banner server that the benchmark starts in the server pod
    /// (PORT SECONDS).
    #[arg(long, hide = true, num_args = 2, value_names = ["PORT", "SECONDS"])]
    serve_banner: Option<Vec<String>>,
    /// Internal: the banner timing client that the benchmark starts in the client
    /// pod (ADDR COUNT SECONDS OUT).
    #[arg(long, hide = true, num_args = 4, value_names = ["ADDR", "COUNT", "SECONDS", "OUT"])]
    time_banner: Option<Vec<String>>,
}

/// How long each kind of load runs.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub quick: bool,
    pub rounds: usize,
    pub warmup: Duration,
    /// Closed-loop maximum-throughput runs.
    pub max: Duration,
    /// The closed-loop connection-rate run (a new connection per request).
    pub conns: Duration,
    /// Each open-loop run: rate × this many requests.
    pub fixed: Duration,
    pub rates: Vec<u32>,
    /// iperf3 seconds.
    pub tcp_secs: u32,
    pub idle_conns: u32,
    /// Sequential connections timed to their banner.
    pub banner_conns: u32,
    pub timeout: Duration,
    /// The loads to run (`--loads`; all when empty).
    pub loads: Vec<String>,
}

impl Plan {
    /// Whether `--loads` lets load `name` run.
    pub fn runs(&self, name: &str) -> bool {
        self.loads.is_empty() || self.loads.iter().any(|l| l == name)
    }
}

/// The names `--loads` accepts.
const LOADS: [&str; 6] = ["http1", "h2", "conns", "tcp", "banner", "idle"];

impl Plan {
    fn new(opts: &Options) -> Plan {
        let quick = opts.quick;
        Plan {
            quick,
            rounds: opts.rounds.unwrap_or(if quick { 1 } else { 3 }).max(1),
            warmup: Duration::from_millis(if quick { 700 } else { 2_000 }),
            max: Duration::from_millis(if quick { 2_000 } else { 5_000 }),
            conns: Duration::from_millis(if quick { 1_500 } else { 4_000 }),
            fixed: Duration::from_millis(if quick { 1_500 } else { 4_000 }),
            rates: vec![1_000, 5_000],
            tcp_secs: if quick { 1 } else { 3 },
            idle_conns: idle_conns_that_fit(),
            banner_conns: 200,
            timeout: opts
                .timeout
                .unwrap_or(Duration::from_secs(if quick { 270 } else { 1_140 })),
            loads: opts.loads.clone(),
        }
    }
}

/// Runs the benchmark (or, with a hidden option, one of its helpers inside a pod:
/// the idle-connection holder, the banner server or the banner client).
pub fn bench(opts: &Options) -> Result<()> {
    if let Some(args) = &opts.hold_idle {
        return load::hold_idle_main(args);
    }
    if let Some(args) = &opts.serve_banner {
        return banner::serve_main(args);
    }
    if let Some(args) = &opts.time_banner {
        return banner::time_main(args);
    }
    let started = Instant::now();
    let plan = Plan::new(opts);
    if let Some(bad) = plan.loads.iter().find(|l| !LOADS.contains(&l.as_str())) {
        bail!(
            "--loads: unknown load {bad:?} (known: {})",
            LOADS.join(", ")
        );
    }
    let kinds = SetupKind::selected(&opts.setups)?;
    crate::system::ensure(crate::system::BENCH_TOOLS)?;
    if !crate::system::is_root() {
        bail!("the benchmark needs root (network namespaces, iptables, cgroups)");
    }
    let bins = setups::Bins::build()?;
    // Inherited by everything the benchmark starts.
    raise_nofile()?;
    let out_dir = bench_dir();
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    crate::interrupt::catch_signals()?;
    let deadline = Deadline(Instant::now() + plan.timeout);
    eprintln!(
        "bench: {} round(s) of {}; loads: warm-up {:?}, max {:?}, fixed rates {:?} req/s for {:?}, new connections {:?}, tcp {} s, banner {} connections",
        plan.rounds,
        kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(" "),
        plan.warmup,
        plan.max,
        plan.rates,
        plan.fixed,
        plan.conns,
        plan.tcp_secs,
        plan.banner_conns
    );

    // The banner server ends by itself a little after the run would have timed out.
    let bench = Bench::new(bins, &kinds, plan.timeout + Duration::from_secs(60))?;
    let result = runs::rounds(&bench, &plan, &kinds, &deadline);
    if result.is_err() && !interrupted() {
        eprint!("{}", bench.mesh.logs_report());
    }
    let prefix = bench.mesh.prefix().to_owned();
    drop(bench);
    eprintln!("bench: namespaces, cgroups and processes of {prefix} removed");
    let samples = result?;

    let medians = report::medians(&samples);
    let failures: Vec<String> = samples
        .iter()
        .flat_map(|r| {
            r.sanity
                .iter()
                .map(move |s| format!("{} {} {}: {s}", r.setup, r.protocol, r.load))
        })
        .collect();
    report::write_json(&out_dir.join("results.json"), &medians)?;
    report::write_json(&out_dir.join("rounds.json"), &samples)?;
    let goals = goals::goals(&medians);
    std::fs::write(
        out_dir.join("goals.json"),
        serde_json::to_string_pretty(&goals)? + "\n",
    )
    .context("write goals.json")?;
    let md = report::markdown(&medians, &plan, started.elapsed())
        + &goals::markdown(&goals)
        + &goals::cpu_split_markdown(&medians);
    std::fs::write(out_dir.join("report.md"), &md).context("write report.md")?;
    plots::draw(&out_dir, &medians).context("drawing the plots")?;
    println!("{md}");
    eprintln!(
        "bench: wrote {}/{{results.json,rounds.json,goals.json,report.md,throughput.png,latency.png}} in {:.0} s",
        out_dir.display(),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        bail!("sanity checks failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

/// `target/bench` (or under `$CARGO_TARGET_DIR`).
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"))
}

fn bench_dir() -> PathBuf {
    target_dir().join("bench")
}

/// Raises the soft descriptor limit to the hard one (raising the hard limit needs
/// CAP_SYS_RESOURCE, which containers often lack).
fn raise_nofile() -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising RLIMIT_NOFILE")?;
    }
    Ok(())
}

/// How many idle connections fit: 10,000, unless the descriptor hard limit is too
/// low for a proxy holding each twice (haproxy reserves a client and a server
/// descriptor per connection and refuses to start beyond its limit).
fn idle_conns_that_fit() -> u32 {
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, h)| h)
        .unwrap_or(0);
    let fit = hard.saturating_sub(400) / 2 / 100 * 100;
    fit.min(u64::from(IDLE_CONNS)) as u32
}

/// The idle-connection count the issue asks for.
const IDLE_CONNS: u32 = 10_000;

/// The overall time limit; every wait checks it, and the signal flag.
#[derive(Debug)]
pub(crate) struct Deadline(Instant);

impl Deadline {
    pub(crate) fn passed(&self) -> bool {
        Instant::now() > self.0
    }

    pub(crate) fn check(&self, doing: &str) -> Result<()> {
        if interrupted() {
            bail!("interrupted during {doing}");
        }
        if Instant::now() > self.0 {
            bail!("overall timeout reached during {doing}");
        }
        Ok(())
    }
}
