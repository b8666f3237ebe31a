//! `weftctl top`, `weftctl graph` and `weftctl conns --watch`: live views over the
//! local mesh, built from every proxy's `/metrics` and `/connections`.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use weft_runtime::prom_text::{self, Sample};

use crate::edges::{self, Edge, EdgeStats, EdgeTotals};
use crate::state::{self, MeshState};
use crate::{inspect, podhttp, table};

const PROXY_METRICS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15020);

/// Every reachable proxy's metrics page, parsed; unreachable proxies are named
/// on stderr and left out (a mesh with a dead proxy still has a topology).
fn scrape(mesh: &MeshState) -> Vec<Vec<Sample>> {
    mesh.pods
        .iter()
        .filter_map(
            |p| match podhttp::get(&p.netns, PROXY_METRICS, "/metrics") {
                Ok((200, body)) => Some(prom_text::parse(&body)),
                Ok((code, _)) => {
                    eprintln!("weftctl: {}: /metrics answered {code}", p.addrs.name);
                    None
                }
                Err(e) => {
                    eprintln!("weftctl: {}: {e:#}", p.addrs.name);
                    None
                }
            },
        )
        .collect()
}

fn clear_screen() {
    if std::io::stdout().is_terminal() {
        print!("\x1b[2J\x1b[H");
    } else {
        println!();
    }
}

/// Per service edge: request rate, success rate, p50/p99 latency, connection
/// rate and the share under mutual TLS over each `interval`; `once` prints one sample and returns.
pub fn top(state_dir: &Path, interval: Duration, once: bool) -> Result<()> {
    let mesh = state::require(state_dir)?;
    let mut before = edges::totals(&scrape(&mesh));
    let mut at = Instant::now();
    loop {
        std::thread::sleep(interval);
        let after = edges::totals(&scrape(&mesh));
        let now = Instant::now();
        let stats = edges::stats(&before, &after, now.duration_since(at).as_secs_f64());
        if !once {
            clear_screen();
        }
        print!("{}", top_table(&stats));
        let _ = std::io::stdout().flush();
        if once {
            return Ok(());
        }
        (before, at) = (after, now);
    }
}

fn top_table(stats: &BTreeMap<Edge, EdgeStats>) -> String {
    let ms = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{:.1}ms", s * 1e3));
    let rows: Vec<Vec<String>> = stats
        .iter()
        .map(|((from, to), s)| {
            vec![
                from.clone(),
                to.clone(),
                format!("{:.1}", s.requests_per_s),
                s.success
                    .map_or("-".to_owned(), |r| format!("{:.1}%", r * 100.0)),
                ms(s.p50_s),
                ms(s.p99_s),
                format!("{:.1}", s.connections_per_s),
                s.mtls
                    .map_or("-".to_owned(), |r| format!("{:.0}%", r * 100.0)),
            ]
        })
        .collect();
    table::render(
        &[
            "SOURCE",
            "DESTINATION",
            "REQ/S",
            "SUCCESS",
            "P50",
            "P99",
            "CONN/S",
            "MTLS",
        ],
        &rows,
    )
}

/// The service topology as DOT on stdout, or rendered to `svg` with Graphviz.
pub fn graph(state_dir: &Path, svg: Option<&Path>) -> Result<()> {
    let mesh = state::require(state_dir)?;
    let totals: BTreeMap<Edge, EdgeTotals> = edges::totals(&scrape(&mesh));
    let dot = edges::dot(&totals);
    let Some(svg) = svg else {
        print!("{dot}");
        return Ok(());
    };
    let mut child = Command::new("dot")
        .args(["-Tsvg", "-o"])
        .arg(svg)
        .stdin(Stdio::piped())
        .spawn()
        .context("run `dot` (Graphviz; on Debian: apt-get install graphviz) — without --svg, weftctl prints DOT")?;
    child
        .stdin
        .take()
        .context("dot's stdin")?
        .write_all(dot.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("dot failed: {status}");
    }
    println!("weftctl: wrote {}", svg.display());
    Ok(())
}

/// `conns POD --watch`: the table, redrawn every `interval` until Ctrl-C.
pub fn watch_conns(state_dir: &Path, pod: &str, interval: Duration) -> Result<()> {
    let mesh = state::require(state_dir)?;
    loop {
        let list = inspect::connections(&mesh, pod)?;
        clear_screen();
        println!(
            "{pod}: {} connections (live first, then recently closed)\n",
            list.len()
        );
        print!("{}", inspect::conns_table(&mesh, &list));
        let _ = std::io::stdout().flush();
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_rows_show_rates_and_latency() {
        let mut stats = BTreeMap::new();
        stats.insert(
            ("frontend".to_owned(), "backend".to_owned()),
            EdgeStats {
                requests_per_s: 12.34,
                success: Some(0.995),
                p50_s: Some(0.0012),
                p99_s: None,
                connections_per_s: 0.0,
                mtls: Some(1.0),
            },
        );
        let t = top_table(&stats);
        let row = t.lines().nth(1).unwrap_or_default();
        for cell in [
            "frontend", "backend", "12.3", "99.5%", "1.2ms", "-", "0.0", "100%",
        ] {
            assert!(row.contains(cell), "{cell:?} in {row:?}");
        }
    }
}
