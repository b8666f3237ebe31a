//! A pod joined to the mesh the way weft does it: `weft-init` installs capture in the
//! pod, then `weft-proxy` runs there as the proxy uid. Reads the proxy's admin and
//! metrics endpoints from inside the pod.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::cgroup::PodCgroup;
use crate::{wait_until, weft_bin, Pod, PodProc, ProcSpec};

/// The uid weft-proxy runs as and capture excludes.
pub const PROXY_UID: u32 = 1337;

/// The proxy's readiness without its app: listening, first routes received.
const READY_PROXY: &str = "/ready/proxy";

const ADMIN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 15000);
const METRICS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 15020);

/// A pod with capture installed and its proxy running.
#[derive(Debug, Clone)]
pub struct Sidecar {
    pod: Pod,
    proxy: PodProc,
}

/// Runs `weft-init ARGS` in `pod` as root and returns its stdout; fails with its
/// stderr when it exits non-zero.
pub fn weft_init(pod: &Pod, args: &[&str]) -> Result<String> {
    let bin = weft_bin("weft-init");
    let mut argv = vec![bin.to_string_lossy().into_owned()];
    argv.extend(args.iter().map(|a| a.to_string()));
    pod.run_ok(&argv, None, Duration::from_secs(30))
}

impl Sidecar {
    /// Installs capture with `weft-init INIT_ARGS` and starts weft-proxy as uid 1337
    /// with `--service <pod name>`, then waits until `/ready/proxy` answers 200.
    pub fn start(pod: &Pod, init_args: &[&str]) -> Result<Sidecar> {
        Sidecar::start_with(pod, init_args, pod.name(), &[])
    }

    /// Like [`Sidecar::start`], with the proxy's service name and extra proxy flags
    /// (e.g. `--controller URL`).
    pub fn start_with(
        pod: &Pod,
        init_args: &[&str],
        service: &str,
        proxy_args: &[&str],
    ) -> Result<Sidecar> {
        weft_init(pod, init_args).context("weft-init")?;
        Sidecar::launch(pod, service, proxy_args, None, READY_PROXY)
    }

    /// Like [`Sidecar::start_with`] (or [`Sidecar::start_ebpf_with`] with a
    /// `cgroup`), but waits only until the proxy serves (`/live`), not for its first
    /// routes: for a proxy that is not meant to get any (a credential the
    /// controller refuses).
    pub fn start_unsynced(
        pod: &Pod,
        cgroup: Option<&Path>,
        init_args: &[&str],
        service: &str,
        proxy_args: &[&str],
    ) -> Result<Sidecar> {
        let path = cgroup.map(|c| c.to_string_lossy().into_owned());
        let mut args = Vec::new();
        if let Some(path) = &path {
            args.extend(["--mode", "ebpf", "--cgroup", path.as_str()]);
        }
        args.extend_from_slice(init_args);
        weft_init(pod, &args).context("weft-init")?;
        Sidecar::launch(pod, service, proxy_args, cgroup, "/live")
    }

    /// An eBPF-mode sidecar: `weft-init --mode ebpf --cgroup <cgroup> INIT_ARGS`,
    /// then weft-proxy as uid 1337 inside the pod's cgroup (see
    /// [`ProcSpec::cgroup`]); run the pod's apps in the cgroup too (the same, or
    /// [`PodCgroup::wrap`], or a weft-e2e `ModePod`).
    pub fn start_ebpf(pod: &Pod, cgroup: &PodCgroup, init_args: &[&str]) -> Result<Sidecar> {
        Sidecar::start_ebpf_with(pod, cgroup.path(), init_args, pod.name(), &[])
    }

    /// Like [`Sidecar::start_ebpf`] for the cgroup directory `cgroup`, with the
    /// proxy's service name and extra proxy flags (as [`Sidecar::start_with`]).
    pub fn start_ebpf_with(
        pod: &Pod,
        cgroup: &Path,
        init_args: &[&str],
        service: &str,
        proxy_args: &[&str],
    ) -> Result<Sidecar> {
        let path = cgroup.to_string_lossy().into_owned();
        let mut args = vec!["--mode", "ebpf", "--cgroup", path.as_str()];
        args.extend_from_slice(init_args);
        weft_init(pod, &args).context("weft-init --mode ebpf")?;
        Sidecar::launch(pod, service, proxy_args, Some(cgroup), READY_PROXY)
    }

    /// Starts weft-proxy as uid 1337 (in `cgroup`, if given) and waits until `ready`
    /// answers 200 ([`READY_PROXY`]: listening, first routes received).
    fn launch(
        pod: &Pod,
        service: &str,
        proxy_args: &[&str],
        cgroup: Option<&Path>,
        ready: &str,
    ) -> Result<Sidecar> {
        let bin = weft_bin("weft-proxy").to_string_lossy().into_owned();
        let mut argv = vec![
            bin.as_str(),
            "--service",
            service,
            "--proxy-id",
            pod.name(),
            "--drain-grace",
            "2s",
            // No wait before the drain (the proxy's default is 3 s, for peers to
            // learn of it): teardown stops every pod at once. Tests of the drain
            // itself pass the delay they mean.
            "--drain-delay",
            "0s",
            "--log",
            "info,weft_proxy=debug",
        ];
        argv.extend_from_slice(proxy_args);
        // A sidecar of the controller gets its own token, scoped to its service,
        // unless the caller says which (or that there is none).
        let token_file;
        if proxy_args.contains(&"--controller")
            && !proxy_args
                .iter()
                .any(|a| a.starts_with("--controller-token-file"))
        {
            token_file = pod
                .credentials()
                .issue_with_identity(
                    &format!("pod-{}", pod.name()),
                    &[service],
                    Some(service),
                    Some(PROXY_UID),
                )?
                .to_string_lossy()
                .into_owned();
            argv.extend(["--controller-token-file", token_file.as_str()]);
        }
        let mut spec = ProcSpec::new(argv).uid(PROXY_UID).name("weft-proxy");
        if let Some(cg) = cgroup {
            spec = spec.cgroup(cg);
        }
        let proxy = pod.spawn(spec)?;
        let sidecar = Sidecar {
            pod: pod.clone(),
            proxy,
        };
        // `/ready/proxy`, not `/ready`: the pod's app starts after its sidecar, and
        // `/ready` waits for it when the pod backs its service.
        wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            matches!(sidecar.pod.http_get(METRICS, ready), Ok((200, _)))
        })
        .with_context(|| {
            format!(
                "weft-proxy in {} never became ready:\n{}",
                pod.name(),
                sidecar.proxy.logs()
            )
        })?;
        Ok(sidecar)
    }

    /// The pod this sidecar serves.
    pub fn pod(&self) -> &Pod {
        &self.pod
    }

    /// The proxy process.
    pub fn proxy(&self) -> &PodProc {
        &self.proxy
    }

    /// `/connections`: live connections then the closed history.
    pub fn connections(&self) -> Result<Vec<Value>> {
        let (status, body) = self.pod.http_get(ADMIN, "/connections")?;
        if status != 200 {
            bail!("/connections answered {status}: {body}");
        }
        let v: Value = serde_json::from_str(&body).context("/connections is not JSON")?;
        match v.get("connections").and_then(Value::as_array) {
            Some(list) => Ok(list.clone()),
            None => bail!("/connections has no list: {body}"),
        }
    }

    /// Connections (live or closed) whose original destination is `dst`.
    pub fn connections_to(&self, dst: SocketAddr) -> Result<Vec<Value>> {
        let dst = dst.to_string();
        Ok(self
            .connections()?
            .into_iter()
            .filter(|c| c["original_destination"] == dst.as_str())
            .collect())
    }

    /// The `/metrics` page.
    pub fn metrics(&self) -> Result<String> {
        let (status, body) = self.pod.http_get(METRICS, "/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(body)
    }

    /// The summed value of `name` over samples carrying all of `labels` (0 when
    /// none does — a counter that never moved is not exported).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        Ok(weft_runtime::prom_text::value(&self.metrics()?, name, labels).unwrap_or(0.0))
    }

    /// Waits until every connection to `dst` the proxy saw has closed, so counts and
    /// byte totals are final.
    pub fn wait_closed(&self, dst: SocketAddr) -> Result<Vec<Value>> {
        let mut last = Vec::new();
        wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            last = self.connections_to(dst).unwrap_or_default();
            last.iter().all(|c| c["state"] == "closed")
        })
        .with_context(|| format!("connections to {dst} still open: {last:?}"))?;
        Ok(last)
    }
}
