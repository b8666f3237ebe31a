//! Result rows, their medians over rounds, `results.json` and `report.md`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::Plan;

/// One measurement (one round), or the median of a setup × protocol × load over
/// rounds. Numbers that do not apply are `null`.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub setup: String,
    /// `http1`, `h2` or `tcp`.
    pub protocol: String,
    /// `max` (closed loop), `<rate>/s` (open loop), `conn` (closed loop, a new
    /// connection per request), `bulk` (TCP), `banner` (TCP, the server speaks
    /// first) or `idle` (10,000 idle connections).
    pub load: String,
    /// The round; 0 for a median.
    pub round: usize,
    /// Rounds a median was taken over.
    pub rounds: usize,
    /// False when the setup could not run here; `note` says why.
    pub available: bool,
    pub note: Option<String>,
    pub rate: Option<u32>,
    /// Responses; for `banner`, connections timed to their banner.
    pub requests: Option<u64>,
    pub rps: Option<f64>,
    /// Latency percentiles; for `banner`, from before connect() to the first
    /// banner byte.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    /// `banner`: p50 minus `direct`'s banner p50 in the same round (for a median,
    /// the median of those): the delay the setup adds before a server-first
    /// protocol's greeting reaches the client.
    pub added_p50_ms: Option<f64>,
    /// `banner`: connections whose banner arrived byte for byte as sent.
    pub banner_intact: Option<u64>,
    /// `conn`: connections set up per second (one request each).
    pub conn_per_s: Option<f64>,
    /// CPU per 1,000 requests, per proxy (mean of the two hops).
    pub cpu_ms_per_1k: Option<f64>,
    pub cpu_ms_per_1k_client_proxy: Option<f64>,
    pub cpu_ms_per_1k_server_proxy: Option<f64>,
    /// Of `cpu_ms_per_1k`, user space (mean of the two hops); the rest is the
    /// kernel's: system calls and the network stack's work done in them.
    pub cpu_user_ms_per_1k: Option<f64>,
    /// Peak RSS of the larger proxy (VmHWM); for `idle`, RSS while the connections
    /// are open.
    pub rss_mb: Option<f64>,
    pub rss_mb_client_proxy: Option<f64>,
    pub rss_mb_server_proxy: Option<f64>,
    /// `idle`: RSS of the larger proxy before the connections were opened.
    pub rss_mb_before: Option<f64>,
    pub idle_conns: Option<u32>,
    /// `idle`: how many of them answered one more request after the RSS was taken.
    pub idle_answered: Option<u32>,
    /// TCP: the receiver's throughput and byte count.
    pub gbit_s: Option<f64>,
    pub bytes: Option<u64>,
    /// TCP: what the sender wrote (more than `bytes` when data was still buffered
    /// in flight at the end).
    pub bytes_sent: Option<u64>,
    /// TCP: CPU per GB carried, per proxy (mean of the two hops).
    pub cpu_ms_per_gb: Option<f64>,
    /// Sanity-check failures (the run fails when any row has one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sanity: Vec<String>,
}

impl Row {
    pub fn new(setup: &str, protocol: &str, load: &str, round: usize) -> Row {
        Row {
            setup: setup.into(),
            protocol: protocol.into(),
            load: load.into(),
            round,
            rounds: 1,
            available: true,
            note: None,
            rate: None,
            requests: None,
            rps: None,
            p50_ms: None,
            p99_ms: None,
            p999_ms: None,
            added_p50_ms: None,
            banner_intact: None,
            conn_per_s: None,
            cpu_ms_per_1k: None,
            cpu_ms_per_1k_client_proxy: None,
            cpu_ms_per_1k_server_proxy: None,
            cpu_user_ms_per_1k: None,
            rss_mb: None,
            rss_mb_client_proxy: None,
            rss_mb_server_proxy: None,
            rss_mb_before: None,
            idle_conns: None,
            idle_answered: None,
            gbit_s: None,
            bytes: None,
            bytes_sent: None,
            cpu_ms_per_gb: None,
            sanity: Vec::new(),
        }
    }

    /// Every row a setup would have produced in a round, marked unavailable.
    pub fn unavailable_set(setup: &str, round: usize, plan: &Plan, note: &str) -> Vec<Row> {
        let mut rows = Vec::new();
        for proto in ["http1", "h2"] {
            let mut loads = vec![("max".to_string(), None)];
            loads.extend(plan.rates.iter().map(|r| (format!("{r}/s"), Some(*r))));
            for (load, rate) in loads {
                let mut row = Row::new(setup, proto, &load, round);
                row.rate = rate;
                rows.push(row);
            }
        }
        rows.push(Row::new(setup, "http1", "conn", round));
        rows.push(Row::new(setup, "tcp", "bulk", round));
        rows.push(Row::new(setup, "tcp", "banner", round));
        if round == 1 {
            rows.push(Row::new(setup, "http1", "idle", round));
        }
        for r in &mut rows {
            r.available = false;
            r.note = Some(note.to_string());
        }
        rows
    }

    fn key(&self) -> (String, String, String) {
        (self.setup.clone(), self.protocol.clone(), self.load.clone())
    }
}

/// The median of the values present (NaN left out); `None` if none is.
pub fn median(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let mut v: Vec<f64> = values
        .into_iter()
        .flatten()
        .filter(|x| x.is_finite())
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// One row per setup × protocol × load, each number the median over its rounds, in
/// the order first seen.
pub fn medians(samples: &[Row]) -> Vec<Row> {
    let mut keys: Vec<(String, String, String)> = Vec::new();
    for r in samples {
        if !keys.contains(&r.key()) {
            keys.push(r.key());
        }
    }
    keys.iter()
        .map(|k| {
            let group: Vec<&Row> = samples.iter().filter(|r| &r.key() == k).collect();
            let first = group[0];
            let m = |f: fn(&Row) -> Option<f64>| median(group.iter().map(|r| f(r)));
            let mu = |f: fn(&Row) -> Option<u64>| {
                median(group.iter().map(|r| f(r).map(|x| x as f64))).map(|x| x.round() as u64)
            };
            Row {
                round: 0,
                rounds: group.len(),
                available: group.iter().all(|r| r.available),
                requests: mu(|r| r.requests),
                rps: m(|r| r.rps),
                p50_ms: m(|r| r.p50_ms),
                p99_ms: m(|r| r.p99_ms),
                p999_ms: m(|r| r.p999_ms),
                added_p50_ms: m(|r| r.added_p50_ms),
                banner_intact: mu(|r| r.banner_intact),
                conn_per_s: m(|r| r.conn_per_s),
                cpu_ms_per_1k: m(|r| r.cpu_ms_per_1k),
                cpu_ms_per_1k_client_proxy: m(|r| r.cpu_ms_per_1k_client_proxy),
                cpu_ms_per_1k_server_proxy: m(|r| r.cpu_ms_per_1k_server_proxy),
                cpu_user_ms_per_1k: m(|r| r.cpu_user_ms_per_1k),
                rss_mb: m(|r| r.rss_mb),
                rss_mb_client_proxy: m(|r| r.rss_mb_client_proxy),
                rss_mb_server_proxy: m(|r| r.rss_mb_server_proxy),
                rss_mb_before: m(|r| r.rss_mb_before),
                idle_conns: mu(|r| r.idle_conns.map(u64::from)).map(|x| x as u32),
                idle_answered: mu(|r| r.idle_answered.map(u64::from)).map(|x| x as u32),
                gbit_s: m(|r| r.gbit_s),
                bytes: mu(|r| r.bytes),
                bytes_sent: mu(|r| r.bytes_sent),
                cpu_ms_per_gb: m(|r| r.cpu_ms_per_gb),
                sanity: group.iter().flat_map(|r| r.sanity.clone()).collect(),
                ..first.clone()
            }
        })
        .collect()
}

/// Sets each banner row's `added_p50_ms`: its p50 minus `direct`'s banner p50 of
/// the same round (left unset when that round has no `direct` banner row).
pub fn banner_added_vs_direct(rows: &mut [Row]) {
    let direct: Vec<(usize, f64)> = rows
        .iter()
        .filter(|r| r.setup == "direct" && r.load == "banner" && r.available)
        .filter_map(|r| Some((r.round, r.p50_ms?)))
        .collect();
    for r in rows
        .iter_mut()
        .filter(|r| r.load == "banner" && r.available)
    {
        let base = direct.iter().find(|(round, _)| *round == r.round);
        if let (Some(p50), Some((_, base))) = (r.p50_ms, base) {
            r.added_p50_ms = Some(p50 - base);
        }
    }
}

pub fn write_json(path: &Path, rows: &[Row]) -> Result<()> {
    let text = serde_json::to_string_pretty(rows)?;
    std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))
}

fn find<'a>(rows: &'a [Row], setup: &str, protocol: &str, load: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.setup == setup && r.protocol == protocol && r.load == load && r.available)
}

fn f(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "–".into(),
    }
}

fn ratio(v: Option<f64>, base: Option<f64>) -> String {
    match (v, base) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

/// The setups present, in order.
fn setups(rows: &[Row]) -> Vec<String> {
    let mut s: Vec<String> = Vec::new();
    for r in rows {
        if !s.contains(&r.setup) {
            s.push(r.setup.clone());
        }
    }
    s
}

/// `report.md`: throughput with ratios to direct and to nginx, latency at fixed
/// rates, the time to a server-first banner, the proxies' CPU and memory, and setups
/// that could not run.
pub fn markdown(rows: &[Row], plan: &Plan, took: Duration) -> String {
    let mut s = String::new();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let _ = writeln!(s, "# weft benchmark\n");
    let _ = writeln!(
        s,
        "`cargo xtask bench{}`: {} round(s), medians; {} CPUs, Linux {}; took {:.0} s. \
         Client pod → server pod, 64-byte HTTP responses from nginx; two proxy hops \
         (client side and server side), one worker each. Load generator and client-side \
         proxy on CPU 0, app and server-side proxy on CPU 1. oha: closed loop \
         (HTTP/1.1: 32 connections; h2c: 4 connections × 8 streams; connection setup \
         rate: HTTP/1.1, 32 at a time, a new connection per request) and open loop with \
         coordinated-omission correction; iperf3 for TCP (receiver-side throughput). p99/p99.9 swing with \
         scheduling noise: judge tails over several rounds, never one.\n",
        if plan.quick { " --quick" } else { "" },
        plan.rounds,
        cpus,
        kernel.trim(),
        took.as_secs_f64()
    );
    let names = setups(rows);

    let _ = writeln!(s, "## Maximum throughput (closed loop)\n");
    let _ = writeln!(
        s,
        "| setup | HTTP/1.1 req/s | ×direct | ×nginx | h2c req/s | ×direct | ×nginx | TCP Gbit/s | ×direct | ×nginx |"
    );
    let _ = writeln!(
        s,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for n in &names {
        let mut cells = vec![n.clone()];
        for (proto, load, get) in [
            ("http1", "max", (|r: &Row| r.rps) as fn(&Row) -> Option<f64>),
            ("h2", "max", |r: &Row| r.rps),
            ("tcp", "bulk", |r: &Row| r.gbit_s),
        ] {
            let v = find(rows, n, proto, load).and_then(get);
            let d = find(rows, "direct", proto, load).and_then(get);
            let x = find(rows, "nginx", proto, load).and_then(get);
            cells.push(f(v, if proto == "tcp" { 2 } else { 0 }));
            cells.push(ratio(v, d));
            cells.push(ratio(v, x));
        }
        let _ = writeln!(s, "| {} |", cells.join(" | "));
    }

    let _ = writeln!(
        s,
        "\n## Connection setup rate (closed loop, HTTP/1.1, a new connection per request)\n"
    );
    let _ = writeln!(
        s,
        "| setup | conn/s | ×direct | ×nginx | p50 ms | p99 ms | p99.9 ms |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let d = find(rows, "direct", "http1", "conn").and_then(|r| r.conn_per_s);
    let x = find(rows, "nginx", "http1", "conn").and_then(|r| r.conn_per_s);
    for n in &names {
        let Some(r) = find(rows, n, "http1", "conn") else {
            continue;
        };
        let _ = writeln!(
            s,
            "| {n} | {} | {} | {} | {} | {} | {} |",
            f(r.conn_per_s, 0),
            ratio(r.conn_per_s, d),
            ratio(r.conn_per_s, x),
            f(r.p50_ms, 3),
            f(r.p99_ms, 3),
            f(r.p999_ms, 3),
        );
    }

    let _ = writeln!(s, "\n## Latency at fixed rates (open loop, ms)\n");
    let _ = writeln!(
        s,
        "| setup | protocol | rate | p50 | +p50 vs direct | p99 | p99.9 | ×direct p99 | ×nginx p99 |"
    );
    let _ = writeln!(
        s,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for proto in ["http1", "h2"] {
        for rate in &plan.rates {
            let load = format!("{rate}/s");
            let d = find(rows, "direct", proto, &load);
            let x = find(rows, "nginx", proto, &load);
            for n in &names {
                let Some(r) = find(rows, n, proto, &load) else {
                    continue;
                };
                let added = match (r.p50_ms, d.and_then(|d| d.p50_ms)) {
                    (Some(a), Some(b)) => format!("{:+.3}", a - b),
                    _ => "–".into(),
                };
                let _ = writeln!(
                    s,
                    "| {n} | {proto} | {rate} | {} | {added} | {} | {} | {} | {} |",
                    f(r.p50_ms, 3),
                    f(r.p99_ms, 3),
                    f(r.p999_ms, 3),
                    ratio(r.p99_ms, d.and_then(|d| d.p99_ms)),
                    ratio(r.p99_ms, x.and_then(|x| x.p99_ms)),
                );
            }
        }
    }

    banner_table(&mut s, rows, &names, plan);

    let _ = writeln!(s, "\n## Cost of the proxies (per proxy)\n");
    let _ = writeln!(
        s,
        "| setup | CPU ms / 1k req, HTTP/1.1 max (client, server) | of which user / kernel | CPU ms / 1k req, h2c max | CPU ms / GB, TCP | peak RSS MB | RSS MB, idle → {} idle conns (client, server) | idle conns answering again |",
        plan.idle_conns
    );
    let _ = writeln!(
        s,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for n in names.iter().filter(|n| n.as_str() != "direct") {
        let h1 = find(rows, n, "http1", "max");
        let h2 = find(rows, n, "h2", "max");
        let tcp = find(rows, n, "tcp", "bulk");
        let idle = find(rows, n, "http1", "idle");
        let peak = rows
            .iter()
            .filter(|r| &r.setup == n && r.load != "idle" && r.available)
            .filter_map(|r| r.rss_mb)
            .reduce(f64::max);
        let _ = writeln!(
            s,
            "| {n} | {} ({}, {}) | {} / {} | {} | {} | {} | {} → {} ({}, {}) | {} |",
            f(h1.and_then(|r| r.cpu_ms_per_1k), 1),
            f(h1.and_then(|r| r.cpu_ms_per_1k_client_proxy), 1),
            f(h1.and_then(|r| r.cpu_ms_per_1k_server_proxy), 1),
            f(h1.and_then(|r| r.cpu_user_ms_per_1k), 1),
            f(
                h1.and_then(|r| Some(r.cpu_ms_per_1k? - r.cpu_user_ms_per_1k?)),
                1
            ),
            f(h2.and_then(|r| r.cpu_ms_per_1k), 1),
            f(tcp.and_then(|r| r.cpu_ms_per_gb), 0),
            f(peak, 1),
            f(idle.and_then(|r| r.rss_mb_before), 1),
            f(idle.and_then(|r| r.rss_mb), 1),
            f(idle.and_then(|r| r.rss_mb_client_proxy), 1),
            f(idle.and_then(|r| r.rss_mb_server_proxy), 1),
            idle.and_then(|r| r.idle_answered)
                .map_or("–".to_owned(), |n| n.to_string()),
        );
    }

    let gaps = sender_receiver_gaps(rows);
    if !gaps.is_empty() {
        let _ = writeln!(
            s,
            "\nTCP: iperf3's sender and receiver disagree by more than 10%. The table \
             shows the receiver's side; the difference was taken by the sender's socket \
             but had not reached the receiver when the test ended:\n\n{}",
            gaps.join("\n")
        );
    }

    let missing: Vec<&Row> = rows.iter().filter(|r| !r.available).collect();
    let mut notes: Vec<String> = Vec::new();
    for r in missing {
        let line = format!("- `{}`: {}", r.setup, r.note.clone().unwrap_or_default());
        if !notes.contains(&line) {
            notes.push(line);
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(s, "\n## Not measured\n\n{}", notes.join("\n"));
    }
    let _ = writeln!(
        s,
        "\nnginx proxies HTTP/1.1 upstream only: its h2c rows are h2c from the client to \
         the client-side nginx, HTTP/1.1 keep-alive beyond. weft and haproxy keep h2c on \
         every hop. CPU is user + system time from /proc over the run, divided by the \
         requests; its kernel part is the system calls and the network stack's work \
         done in them, which any user-space proxy pays per request whatever its own \
         code costs. RSS is VmRSS/VmHWM (nginx: master + worker). Idle connections: \
         {} keep-alive HTTP/1.1 connections, one request each ({}).\n\n\
         ![throughput](throughput.png)\n\n![latency](latency.png)",
        plan.idle_conns,
        if plan.idle_conns < 10_000 {
            "fewer than 10,000: the descriptor hard limit here is too low for a proxy holding 10,000 client and upstream sockets, and raising it needs CAP_SYS_RESOURCE"
        } else {
            "the issue's 10,000"
        }
    );
    s
}

/// The banner rows: time from connect() to a server-first greeting, and what each
/// setup adds to `direct`'s.
fn banner_table(s: &mut String, rows: &[Row], names: &[String], plan: &Plan) {
    if !names
        .iter()
        .any(|n| find(rows, n, "tcp", "banner").is_some())
    {
        return;
    }
    let _ = writeln!(
        s,
        "\n## Server speaks first (tcp / banner, ms)\n\n\
         {} sequential connections to a server that writes a {}-byte banner on accept \
         (weft: an `auto` port, detection on); time from connect() to the first banner \
         byte; +p50 is the p50 minus `direct`'s in the same round.\n",
        plan.banner_conns,
        super::banner::BANNER.len()
    );
    let _ = writeln!(s, "| setup | p50 | +p50 vs direct | p99 | banners intact |");
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: |");
    for n in names {
        let Some(r) = find(rows, n, "tcp", "banner") else {
            continue;
        };
        let intact = match (r.banner_intact, r.requests) {
            (Some(i), Some(c)) => format!("{i}/{c}"),
            _ => "–".into(),
        };
        let added = r
            .added_p50_ms
            .map_or("–".to_owned(), |a| format!("{a:+.3}"));
        let _ = writeln!(
            s,
            "| {n} | {} | {added} | {} | {intact} |",
            f(r.p50_ms, 3),
            f(r.p99_ms, 3),
        );
    }
}

/// TCP rows whose sender wrote more than 10% more (or less) than the receiver got:
/// one line each.
fn sender_receiver_gaps(rows: &[Row]) -> Vec<String> {
    rows.iter()
        .filter(|r| r.protocol == "tcp" && r.available)
        .filter_map(|r| {
            let (sent, got) = (r.bytes_sent? as f64, r.bytes? as f64);
            let gap = (sent - got).abs() / sent.max(got).max(1.0);
            (gap > 0.10).then(|| {
                format!(
                    "- `{}`: sent {:.2} GB, received {:.2} GB ({:.0}% apart)",
                    r.setup,
                    sent / 1e9,
                    got / 1e9,
                    gap * 100.0
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_ignore_missing_values() {
        assert_eq!(median([Some(3.0), None, Some(1.0), Some(2.0)]), Some(2.0));
        assert_eq!(median([Some(1.0), Some(2.0)]), Some(1.5));
        assert_eq!(median([None, Some(f64::NAN)]), None);
    }

    #[test]
    fn rows_merge_over_rounds() {
        let mut a = Row::new("direct", "http1", "max", 1);
        a.rps = Some(100.0);
        let mut b = Row::new("direct", "http1", "max", 2);
        b.rps = Some(300.0);
        b.sanity.push("x".into());
        let c = Row::new("nginx", "http1", "max", 1);
        let m = medians(&[a, c, b]);
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].rps, m[0].rounds, m[0].sanity.len()),
            (Some(200.0), 2, 1)
        );
        assert_eq!(m[1].setup, "nginx");
    }

    #[test]
    fn banner_rows_get_their_delay_over_direct_in_the_same_round() {
        let banner = |setup: &str, round, p50| {
            let mut r = Row::new(setup, "tcp", "banner", round);
            r.p50_ms = Some(p50);
            r
        };
        let mut rows = vec![
            banner("direct", 1, 0.25),
            banner("weft-iptables", 1, 20.75),
            banner("direct", 2, 0.5),
            banner("weft-iptables", 2, 21.5),
            // A round without direct: nothing to subtract.
            banner("nginx", 3, 0.75),
            Row::new("weft-iptables", "http1", "1000/s", 1),
        ];
        banner_added_vs_direct(&mut rows);
        let added: Vec<Option<f64>> = rows.iter().map(|r| r.added_p50_ms).collect();
        assert_eq!(
            added,
            vec![Some(0.0), Some(20.5), Some(0.0), Some(21.0), None, None]
        );
        let m = medians(&rows);
        assert_eq!(m[1].added_p50_ms, Some(20.75));
    }

    #[test]
    fn sender_receiver_gaps_over_ten_percent_are_noted() {
        let mut a = Row::new("weft-ebpf-sockmap", "tcp", "bulk", 0);
        a.bytes_sent = Some(1_250_000_000);
        a.bytes = Some(750_000_000);
        let mut b = Row::new("direct", "tcp", "bulk", 0);
        b.bytes_sent = Some(1_050_000_000);
        b.bytes = Some(1_000_000_000);
        let gaps = sender_receiver_gaps(&[a, b]);
        assert_eq!(gaps.len(), 1);
        assert!(gaps[0].contains("weft-ebpf-sockmap") && gaps[0].contains("40%"));
    }
}
