//! Process metrics — memory, CPU, file descriptors, threads — as OpenTelemetry
//! observable instruments read from `/proc/self` at scrape time (nothing is sampled
//! in between, so a scrape costs four small file reads and one directory listing).
//!
//! | series | from |
//! | --- | --- |
//! | `process_resident_memory_bytes` | `/proc/self/status` `VmRSS` |
//! | `process_cpu_seconds_total` (user + system) | `/proc/self/stat` utime + stime |
//! | `process_open_fds` | entries of `/proc/self/fd` |
//! | `process_max_fds` (soft limit) | `/proc/self/limits` "Max open files" |
//! | `process_threads` | `/proc/self/status` `Threads` |
//!
//! The names are the standard ones every Prometheus client library exports for its
//! process, not `weft_*`: dashboards, alerts and people already know them, and the
//! `job`/`instance` labels tell a proxy from the controller. No labels.
//!
//! Every [`crate::metrics::Exporter`] registers them, so the proxy and the
//! controller export the same set. Linux only; on a read error the instrument
//! reports nothing for that scrape rather than a wrong value.

use std::path::Path;

use opentelemetry::metrics::Meter;

/// Clock ticks per second of the times in `/proc/<pid>/stat` (`USER_HZ`): fixed at
/// 100 by the kernel ABI on every architecture Linux exports it for, whatever the
/// kernel's internal HZ.
const USER_HZ: f64 = 100.0;

/// Registers the process instruments on `meter`. The callbacks live in the meter's
/// provider; call once per provider.
pub fn register(meter: &Meter) {
    register_at(meter, Path::new("/proc/self"));
}

/// [`register`] reading another `/proc/<pid>`-shaped directory (tests).
fn register_at(meter: &Meter, proc_dir: &Path) {
    let dir = proc_dir.to_path_buf();
    let _ = meter
        .u64_observable_gauge("process_resident_memory_bytes")
        .with_description("Resident memory size in bytes")
        .with_callback(move |o| {
            if let Some(status) = read(&dir.join("status")) {
                if let Some(kb) = status_field(&status, "VmRSS:") {
                    o.observe(kb.saturating_mul(1024), &[]);
                }
            }
        })
        .build();
    let dir = proc_dir.to_path_buf();
    let _ = meter
        .f64_observable_counter("process_cpu_seconds")
        .with_description("Total user and system CPU time spent in seconds")
        .with_callback(move |o| {
            if let Some(secs) = read(&dir.join("stat")).and_then(|s| cpu_seconds(&s)) {
                o.observe(secs, &[]);
            }
        })
        .build();
    let dir = proc_dir.to_path_buf();
    let _ = meter
        .u64_observable_gauge("process_open_fds")
        .with_description("Number of open file descriptors")
        .with_callback(move |o| {
            if let Ok(entries) = std::fs::read_dir(dir.join("fd")) {
                // The listing's own descriptor is among them, as in every client
                // library's collector.
                let n = entries.filter(|e| e.is_ok()).count();
                o.observe(u64::try_from(n).unwrap_or(u64::MAX), &[]);
            }
        })
        .build();
    let dir = proc_dir.to_path_buf();
    let _ = meter
        .u64_observable_gauge("process_max_fds")
        .with_description("Maximum number of open file descriptors (soft limit)")
        .with_callback(move |o| {
            if let Some(max) = read(&dir.join("limits")).and_then(|l| max_open_files(&l)) {
                o.observe(max, &[]);
            }
        })
        .build();
    let dir = proc_dir.to_path_buf();
    let _ = meter
        .u64_observable_gauge("process_threads")
        .with_description("Number of OS threads in the process")
        .with_callback(move |o| {
            if let Some(n) = read(&dir.join("status")).and_then(|s| status_field(&s, "Threads:")) {
                o.observe(n, &[]);
            }
        })
        .build();
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The first number of the `/proc/<pid>/status` line starting with `key` (e.g.
/// `VmRSS:` → kB).
fn status_field(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// utime + stime of a `/proc/<pid>/stat` line, in seconds. The command name (field
/// 2) is in parentheses and may hold spaces or parentheses itself, so fields are
/// counted after the last `)`: state is field 3, utime 14, stime 15.
fn cpu_seconds(stat: &str) -> Option<f64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // Tick counts stay far below 2^53: exact as f64.
    Some((utime + stime) as f64 / USER_HZ)
}

/// The soft limit of "Max open files" in `/proc/<pid>/limits`; `unlimited` is
/// reported as `u64::MAX`.
fn max_open_files(limits: &str) -> Option<u64> {
    let rest = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    match rest.split_whitespace().next()? {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        // Fields after the name: state ppid pgrp session tty tpgid flags minflt
        // cminflt majflt cmajflt utime stime ...
        let stat = "4242 (we ft) (x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 9";
        assert_eq!(cpu_seconds(stat), Some(3.25));
        assert_eq!(cpu_seconds("garbage"), None);
        assert_eq!(cpu_seconds("1 (x) S 1 2"), None);
    }

    #[test]
    fn parses_status_and_limits() {
        let status = "Name:\tweft-proxy\nVmRSS:\t   10240 kB\nThreads:\t7\n";
        assert_eq!(status_field(status, "VmRSS:"), Some(10240));
        assert_eq!(status_field(status, "Threads:"), Some(7));
        assert_eq!(status_field(status, "VmSwap:"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(max_open_files(unlimited), Some(u64::MAX));
    }

    /// Through the exporter the proxy and the controller use.
    #[test]
    fn exported_under_the_standard_names() {
        let exporter = crate::metrics::Exporter::new(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("test")
                .build(),
        )
        .unwrap();
        let text = String::from_utf8(exporter.render()).unwrap();
        for (name, kind) in [
            ("process_resident_memory_bytes", "gauge"),
            ("process_cpu_seconds_total", "counter"),
            ("process_open_fds", "gauge"),
            ("process_max_fds", "gauge"),
            ("process_threads", "gauge"),
        ] {
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{text}");
            let value: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} sample: {text}"))
                .parse()
                .unwrap();
            assert!(value >= 0.0, "{name} {value}");
        }
    }

    #[test]
    fn this_process_reads_sensibly() {
        let dir = Path::new("/proc/self");
        let rss = status_field(&read(&dir.join("status")).unwrap(), "VmRSS:").unwrap();
        assert!(rss > 100, "VmRSS {rss} kB");
        assert!(cpu_seconds(&read(&dir.join("stat")).unwrap()).unwrap() >= 0.0);
        assert!(max_open_files(&read(&dir.join("limits")).unwrap()).unwrap() >= 64);
    }
}
