//! What the benchmark reads besides the load generator: CPU time and memory of the
//! proxies from /proc, and request counters (nginx `stub_status`, haproxy's stats
//! CSV, weft's Prometheus `/metrics`).

use anyhow::{bail, Context as _, Result};

/// CPU time and memory of one proxy: every live process of its process group (nginx
/// is a master and a worker; weft and haproxy are one process).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcUsage {
    /// User + system CPU time so far, all threads.
    pub cpu_ms: f64,
    /// Of `cpu_ms`, user time; the rest is the kernel's on the process's behalf
    /// (system calls, and the network stack's work done in them).
    pub user_ms: f64,
    /// Resident memory now (VmRSS, summed).
    pub rss_mb: f64,
    /// Peak resident memory since start (VmHWM, summed).
    pub peak_rss_mb: f64,
}

impl ProcUsage {
    /// The usage of the process group `pgid` (a spawned proxy's pid).
    pub fn of(pgid: u32) -> ProcUsage {
        let mut u = ProcUsage::default();
        // /proc/<pid>/stat counts in clock ticks (USER_HZ).
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) }.max(1) as f64;
        for pid in weft_localmesh::process::group_members(pgid as i32) {
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                if let Some((user, system)) = cpu_ticks(&stat) {
                    u.cpu_ms += (user + system) as f64 * 1000.0 / hz;
                    u.user_ms += user as f64 * 1000.0 / hz;
                }
            }
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                u.rss_mb += status_kib(&status, "VmRSS:").unwrap_or(0) as f64 / 1024.0;
                u.peak_rss_mb += status_kib(&status, "VmHWM:").unwrap_or(0) as f64 / 1024.0;
            }
        }
        u
    }
}

/// (utime, stime) from a `/proc/<pid>/stat` line (fields 14 and 15).
fn cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm)": state is field 3, so utime (14) is index 11 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime, stime))
}

/// A `Key:   123 kB` line of `/proc/<pid>/status`, in KiB.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The `requests` total of an nginx `stub_status` page.
pub fn stub_status_requests(body: &str) -> Result<u64> {
    stub_status_totals(body).map(|[_, _, requests]| requests)
}

/// The `accepts` total (connections) of an nginx `stub_status` page.
pub fn stub_status_accepts(body: &str) -> Result<u64> {
    stub_status_totals(body).map(|[accepts, _, _]| accepts)
}

/// `[accepts, handled, requests]` of an nginx `stub_status` page.
fn stub_status_totals(body: &str) -> Result<[u64; 3]> {
    let mut lines = body.lines();
    while let Some(l) = lines.next() {
        if l.trim_start()
            .starts_with("server accepts handled requests")
        {
            let nums: Vec<u64> = lines
                .next()
                .unwrap_or("")
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            if let [accepts, handled, requests] = nums[..] {
                return Ok([accepts, handled, requests]);
            }
        }
    }
    bail!("not a stub_status page: {body:?}")
}

/// `field` of the FRONTEND row of `frontend` in haproxy's stats CSV.
pub fn haproxy_frontend(csv: &str, frontend: &str, field: &str) -> Result<f64> {
    let mut lines = csv.lines();
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .context("haproxy stats CSV without its header")?;
    let col = header
        .split(',')
        .position(|c| c == field)
        .with_context(|| format!("haproxy stats have no {field} column"))?;
    for l in lines {
        let cells: Vec<&str> = l.split(',').collect();
        if cells.first() == Some(&frontend) && cells.get(1) == Some(&"FRONTEND") {
            return cells
                .get(col)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("haproxy {frontend} {field}: {l}"));
        }
    }
    bail!("haproxy stats have no frontend {frontend}")
}

/// The sum of the samples of `name` carrying every one of `labels`, in Prometheus
/// text format (0 when none does: a counter that never moved is not exported).
pub fn prom_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (label_part, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let (ls, v) = r.split_once('}')?;
                    (ls, v)
                }
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            let all = labels
                .iter()
                .all(|(k, v)| label_part.contains(&format!("{k}=\"{v}\"")));
            if !all {
                return None;
            }
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stub_status() {
        let page = "Active connections: 1 \nserver accepts handled requests\n 17 17 3000 \nReading: 0 Writing: 1 Waiting: 0 \n";
        assert_eq!(stub_status_requests(page).ok(), Some(3000));
        assert_eq!(stub_status_accepts(page).ok(), Some(17));
        assert!(stub_status_requests("nope").is_err());
    }

    #[test]
    fn reads_haproxy_csv() {
        let csv = "# pxname,svname,qcur,req_tot,stot\nh1,FRONTEND,,42,7\nup_h1,app,0,,5\nh2,FRONTEND,,9,1\n";
        assert_eq!(haproxy_frontend(csv, "h1", "req_tot").ok(), Some(42.0));
        assert_eq!(haproxy_frontend(csv, "h2", "stot").ok(), Some(1.0));
        assert!(haproxy_frontend(csv, "tcp", "stot").is_err());
    }

    #[test]
    fn sums_prometheus_samples() {
        let text = "# TYPE weft_http_requests_total counter\n\
            weft_http_requests_total{direction=\"outbound\",status_code=\"200\"} 10\n\
            weft_http_requests_total{direction=\"outbound\",status_code=\"502\"} 2\n\
            weft_http_requests_total{direction=\"inbound\",status_code=\"200\"} 7\n\
            weft_http_requests_total_x{direction=\"outbound\"} 100\n";
        assert_eq!(
            prom_sum(
                text,
                "weft_http_requests_total",
                &[("direction", "outbound")]
            ),
            12.0
        );
        assert_eq!(prom_sum(text, "weft_http_requests_total", &[]), 19.0);
    }

    #[test]
    fn reads_cpu_ticks() {
        let stat = "42 (weft proxy) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(cpu_ticks(stat), Some((250, 50)));
    }
}
