//! The bench runs: what is measured against a running setup, in what order, and over
//! how many rounds. Per round, every setup is started afresh ([`super::setups`]),
//! measured, and stopped again. Against a running setup, per protocol (HTTP/1.1, then
//! h2c): a warm-up, the closed-loop maximum-throughput run, the open-loop runs at
//! each fixed rate; then the connection-rate run (HTTP/1.1, a new connection per
//! request), the TCP bulk transfer, the banner run (time to a server-first banner,
//! [`super::banner`]) and, in round 1 for proxied setups only, the idle-connection
//! run. Each run becomes a [`Row`] with the sanity checks of the module docs of
//! [`super`] attached; the counters they compare come from [`super::counters`].
//! Once all rounds are in, each banner row gets its added delay against `direct`'s
//! in the same round.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::banner;
use super::counters::{self, Traffic};
use super::load::{self, HttpLoad, Proto};
use super::measure::ProcUsage;
use super::report::{self, Row};
use super::setups::{Bench, Running, SetupKind};
use super::{interrupted, Deadline, Plan};

/// Every selected setup once per round, in the order given, `plan.rounds` times: A B C
/// A B C, so that a slow drift of the machine spreads over all setups instead of
/// favouring the ones measured first. A setup that fails yields rows marked failed
/// (which fail the run at the end) and the others are still measured; Ctrl-C and the
/// overall timeout end the run.
pub fn rounds(
    bench: &Bench,
    plan: &Plan,
    kinds: &[SetupKind],
    deadline: &Deadline,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for round in 1..=plan.rounds {
        for &kind in kinds {
            deadline.check(&format!("round {round}, {}", kind.name()))?;
            let t = Instant::now();
            let mut got = match measure_setup(bench, kind, round, plan, deadline) {
                Ok(rows) => rows,
                // Ctrl-C and the overall timeout end the run.
                Err(e) if interrupted() || deadline.passed() => return Err(e),
                // A setup that fails is reported (and fails the run at the end), and
                // the other setups are still measured.
                Err(e) => {
                    let e = format!("{e:#}");
                    eprintln!("bench: round {round} {} FAILED: {e}", kind.name());
                    let mut rows =
                        Row::unavailable_set(kind.name(), round, plan, &format!("failed: {e}"));
                    rows[0].sanity.push(format!("the setup failed: {e}"));
                    rows
                }
            };
            eprintln!(
                "bench: round {round}/{} {} done in {:.1} s",
                plan.rounds,
                kind.name(),
                t.elapsed().as_secs_f64()
            );
            rows.append(&mut got);
        }
    }
    report::banner_added_vs_direct(&mut rows);
    Ok(rows)
}

/// Runs every measurement of one setup in one round (the setup started afresh
/// and stopped again); rows marked unavailable when the setup cannot run here.
fn measure_setup(
    bench: &Bench,
    kind: SetupKind,
    round: usize,
    plan: &Plan,
    deadline: &Deadline,
) -> Result<Vec<Row>> {
    if let Some(reason) = bench.unavailable(kind) {
        return Ok(Row::unavailable_set(
            kind.name(),
            round,
            plan,
            &format!("not available: {reason}"),
        ));
    }
    let running = bench.start(kind, plan)?;
    let result = measure_running(bench, &running, round, plan, deadline);
    let stopped = bench.stop(running);
    let rows = result?;
    stopped?;
    Ok(rows)
}

fn measure_running(
    bench: &Bench,
    r: &Running,
    round: usize,
    plan: &Plan,
    deadline: &Deadline,
) -> Result<Vec<Row>> {
    let redirected0 = counters::msg_redirected(bench, r)?;
    let mut rows = Vec::new();
    for proto in [Proto::Http1, Proto::H2] {
        if !plan.runs(proto.name()) {
            continue;
        }
        let url = match proto {
            Proto::Http1 => &r.h1,
            Proto::H2 => &r.h2,
        };
        deadline.check("the warm-up")?;
        load::run_oha(bench, url, proto, &HttpLoad::Closed(plan.warmup), deadline)
            .context("warm-up")?;
        let mut loads = vec![HttpLoad::Closed(plan.max)];
        loads.extend(plan.rates.iter().map(|&rate| HttpLoad::Open {
            rate,
            count: (f64::from(rate) * plan.fixed.as_secs_f64()).round() as u64,
        }));
        for l in loads {
            deadline.check("an HTTP run")?;
            rows.push(http_run(bench, r, round, url, proto, &l, deadline)?);
        }
    }
    if plan.runs("conns") {
        deadline.check("the connection-rate run")?;
        let conns = HttpLoad::NewConns(plan.conns);
        rows.push(http_run(
            bench,
            r,
            round,
            &r.h1,
            Proto::Http1,
            &conns,
            deadline,
        )?);
    }
    if plan.runs("tcp") {
        deadline.check("the TCP run")?;
        rows.push(tcp_run(bench, r, round, plan, deadline)?);
    }
    if plan.runs("banner") {
        deadline.check("the banner run")?;
        rows.push(banner_run(bench, r, round, plan, deadline)?);
    }
    if let (Some(a), Some(b), Some(first)) = (
        redirected0,
        counters::msg_redirected(bench, r)?,
        rows.first_mut(),
    ) {
        if b <= a {
            first.sanity.push(format!(
                "sk_msg redirected no message ({}: {a} before, {b} after): not the setup it claims",
                weft_localmesh::Stat::MsgRedirected.name()
            ));
        }
    }
    if round == 1 && r.proxies.is_some() && plan.runs("idle") {
        deadline.check("the idle-connection run")?;
        rows.push(idle_run(bench, r, plan, deadline)?);
    }
    Ok(rows)
}

fn http_run(
    bench: &Bench,
    r: &Running,
    round: usize,
    url: &str,
    proto: Proto,
    l: &HttpLoad,
    deadline: &Deadline,
) -> Result<Row> {
    let new_conns = matches!(l, HttpLoad::NewConns(_));
    let accepted0 = if new_conns {
        Some(counters::accepted(bench, r)?)
    } else {
        None
    };
    let app0 = counters::app_requests(bench)?;
    let px0 = counters::proxy_counters(bench, r, Traffic::Http(proto))?;
    let use0 = counters::usage(r);
    let res = load::run_oha(bench, url, proto, l, deadline)?;
    let use1 = counters::usage(r);
    let app1 = counters::app_requests(bench)?;
    let px1 = counters::proxy_counters(bench, r, Traffic::Http(proto))?;
    let accepted1 = if new_conns {
        Some(counters::accepted(bench, r)?)
    } else {
        None
    };

    let mut row = Row::new(r.kind.name(), proto.name(), &l.name(), round);
    row.rate = l.rate();
    row.requests = Some(res.responses);
    row.rps = Some(res.rps);
    row.p50_ms = Some(res.p50_ms);
    row.p99_ms = Some(res.p99_ms);
    row.p999_ms = Some(res.p999_ms);
    if new_conns {
        row.conn_per_s = Some(res.rps);
    }
    // The app's counter includes the read of the counter itbench.
    let app_seen = app1.saturating_sub(app0).saturating_sub(1);
    if app_seen != res.responses {
        row.sanity.push(format!(
            "the app saw {app_seen} requests, the load generator reports {} responses",
            res.responses
        ));
    }
    if res.non_200 > 0 || res.errors > 0 {
        row.sanity.push(format!(
            "{} non-200 responses and {} errors ({})",
            res.non_200, res.errors, res.error_text
        ));
    }
    if res.responses == 0 {
        row.sanity.push("no responses at all".into());
    }
    if let (Some(a), Some(b)) = (accepted0, accepted1) {
        // One connection per request, or it measured keep-alive after all.
        if b - a < res.responses as f64 {
            row.sanity.push(format!(
                "{} accepted {} connections for {} requests: connections were reused",
                if r.proxies.is_some() {
                    "the client-side proxy"
                } else {
                    "the app"
                },
                b - a,
                res.responses
            ));
        }
    }
    check_proxies_saw(
        &mut row,
        px0.zip(px1),
        res.responses as f64,
        "request counter moved by",
        "requests",
    );
    if let (Some(u0), Some(u1)) = (use0, use1) {
        let per_1k = |ms: f64| ms / res.responses.max(1) as f64 * 1000.0;
        let c = per_1k(u1.0.cpu_ms - u0.0.cpu_ms);
        let s = per_1k(u1.1.cpu_ms - u0.1.cpu_ms);
        row.cpu_ms_per_1k_client_proxy = Some(c);
        row.cpu_ms_per_1k_server_proxy = Some(s);
        row.cpu_ms_per_1k = Some((c + s) / 2.0);
        let user = (u1.0.user_ms - u0.0.user_ms) + (u1.1.user_ms - u0.1.user_ms);
        row.cpu_user_ms_per_1k = Some(per_1k(user / 2.0));
        row.rss_mb = Some(u1.0.peak_rss_mb.max(u1.1.peak_rss_mb));
    }
    Ok(row)
}

fn tcp_run(
    bench: &Bench,
    r: &Running,
    round: usize,
    plan: &Plan,
    deadline: &Deadline,
) -> Result<Row> {
    let px0 = counters::proxy_counters(bench, r, Traffic::Tcp)?;
    let use0 = counters::usage(r);
    let res = load::run_iperf3(bench, r.tcp, plan.tcp_secs, deadline)?;
    let use1 = counters::usage(r);
    // iperf3 closes its connections as it ends; access logs and counters follow.
    std::thread::sleep(Duration::from_millis(200));
    let px1 = counters::proxy_counters(bench, r, Traffic::Tcp)?;
    let mut row = Row::new(r.kind.name(), "tcp", "bulk", round);
    // Receiver side: what the app got, not what the sender handed to its socket.
    row.gbit_s = Some(res.gbit_s);
    row.bytes = Some(res.bytes_received);
    row.bytes_sent = Some(res.bytes_sent);
    if res.bytes_received == 0 {
        row.sanity.push("iperf3's server received nothing".into());
    }
    // iperf3: a control and a data connection.
    check_proxies_saw(
        &mut row,
        px0.zip(px1),
        2.0,
        "TCP connections seen:",
        "of iperf3",
    );
    if let (Some(u0), Some(u1)) = (use0, use1) {
        let gb = res.bytes_received as f64 / 1e9;
        let c = (u1.0.cpu_ms - u0.0.cpu_ms) / gb.max(1e-9);
        let s = (u1.1.cpu_ms - u0.1.cpu_ms) / gb.max(1e-9);
        row.cpu_ms_per_gb = Some((c + s) / 2.0);
        row.rss_mb = Some(u1.0.peak_rss_mb.max(u1.1.peak_rss_mb));
    }
    Ok(row)
}

/// Time to a server-first banner over `plan.banner_conns` sequential connections,
/// each banner checked byte for byte, and both proxies' connection counters moved.
fn banner_run(
    bench: &Bench,
    r: &Running,
    round: usize,
    plan: &Plan,
    deadline: &Deadline,
) -> Result<Row> {
    let px0 = counters::proxy_counters(bench, r, Traffic::Banner)?;
    let res = banner::run(bench, r.banner, plan.banner_conns, deadline)?;
    // nginx logs a session when it ends, a moment after the client closed.
    std::thread::sleep(Duration::from_millis(200));
    let px1 = counters::proxy_counters(bench, r, Traffic::Banner)?;
    let mut row = Row::new(r.kind.name(), "tcp", "banner", round);
    row.requests = Some(res.connections);
    row.banner_intact = Some(res.intact);
    row.p50_ms = res.p50_ms;
    row.p99_ms = res.p99_ms;
    let wanted = u64::from(plan.banner_conns);
    if res.errors > 0 {
        row.sanity.push(format!(
            "{} of {wanted} banner connections failed: {}",
            res.errors, res.error_text
        ));
    } else if res.connections < wanted {
        row.sanity.push(format!(
            "only {} of {wanted} banner connections were made before the client's time ran out",
            res.connections
        ));
    }
    if res.intact < res.connections {
        row.sanity.push(format!(
            "{} of {} banners arrived altered: {}",
            res.connections - res.intact,
            res.connections,
            res.error_text
        ));
    }
    check_proxies_saw(
        &mut row,
        px0.zip(px1),
        res.connections as f64,
        "banner connections seen:",
        "connections made",
    );
    Ok(row)
}

/// How long the proxies go without traffic before their idle RSS is taken: idle
/// is a proxy that has had no traffic for a while, not one that has just finished
/// a load (weft's closes its surplus idle pooled connections and hands back what a
/// load left after two quiet seconds, checked each second, see proxy/src/memory.rs:
/// 3 s raced with it, and so did 5 s now and then, the bench's own reading of the
/// proxies' counters after the last load counting as work; nginx and haproxy get
/// the same pause).
const IDLE_SETTLE: std::time::Duration = std::time::Duration::from_secs(8);

/// RSS of each proxy while `plan.idle_conns` idle keep-alive HTTP/1.1 connections
/// (one request each) are open through it.
fn idle_run(bench: &Bench, r: &Running, plan: &Plan, deadline: &Deadline) -> Result<Row> {
    let Some((cp, sp)) = &r.proxies else {
        bail!("idle run without proxies");
    };
    std::thread::sleep(IDLE_SETTLE);
    let target: SocketAddr =
        r.h1.trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .context("the HTTP/1.1 target as an address")?;
    let before = (ProcUsage::of(cp.pid()), ProcUsage::of(sp.pid()));
    let app0 = counters::app_requests(bench)?;
    let held = load::hold_idle(bench, target, plan.idle_conns, deadline)?;
    let during = (ProcUsage::of(cp.pid()), ProcUsage::of(sp.pid()));
    let open = held.open;
    let answered = held.request_again()?;
    let app1 = counters::app_requests(bench)?;
    let mut row = Row::new(r.kind.name(), "http1", "idle", 1);
    row.idle_conns = Some(open);
    row.rss_mb = Some(during.0.rss_mb.max(during.1.rss_mb));
    row.rss_mb_client_proxy = Some(during.0.rss_mb);
    row.rss_mb_server_proxy = Some(during.1.rss_mb);
    row.rss_mb_before = Some(before.0.rss_mb.max(before.1.rss_mb));
    if open < plan.idle_conns {
        row.sanity.push(format!(
            "only {open} of {} idle connections could be opened",
            plan.idle_conns
        ));
    }
    row.idle_answered = Some(answered);
    if answered < open {
        row.sanity.push(format!(
            "only {answered} of {open} idle connections answered a request after the RSS was taken"
        ));
    }
    // Two requests per connection: one to open it, one after the RSS was taken.
    let app_seen = app1.saturating_sub(app0).saturating_sub(1);
    if app_seen != u64::from(open) + u64::from(answered) {
        row.sanity.push(format!(
            "the app saw {app_seen} requests for {open} idle connections ({answered} asked twice)"
        ));
    }
    Ok(row)
}

/// Each proxy's counter (before, after) must have moved by at least `expected`:
/// else the traffic went around it.
fn check_proxies_saw(
    row: &mut Row,
    counters: Option<([f64; 2], [f64; 2])>,
    expected: f64,
    what: &str,
    of: &str,
) {
    let Some((a, b)) = counters else {
        return;
    };
    for (i, hop) in ["client-side", "server-side"].iter().enumerate() {
        let moved = b[i] - a[i];
        if moved < expected {
            row.sanity.push(format!(
                "the {hop} proxy's {what} {moved}, fewer than the {expected} {of}: bypassed?"
            ));
        }
    }
}
