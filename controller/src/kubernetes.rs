//! The Kubernetes source (`--kubernetes`): Services and EndpointSlices, watched with
//! kube-rs, mapped to the mesh.
//!
//! The mapping is pure ([`map`]) and the state between watch events is a plain
//! [`Cache`], so both are tested on real-shaped objects without an API server;
//! [`KubernetesSource`] only feeds kube's watcher events into the cache.
//!
//! # Mapping
//!
//! - A Service `NAME` in namespace `NS` is the mesh service `NAME.NS`; its ClusterIP
//!   (the first of `clusterIPs`, so the primary family of a dual-stack Service) is the
//!   VIP. Headless Services (`clusterIP: None`) and `ExternalName` ones have no VIP and
//!   are skipped, as are Services without a TCP port.
//! - Each TCP port is a port. Its target port is the number the EndpointSlices give
//!   for the port's name (which is how a named `targetPort` resolves: the slice
//!   controller looks it up in each pod); without a slice, a numbered `targetPort`,
//!   else the port itself (there is then no endpoint to send to anyway).
//!   `appProtocol` `http`, `http2`, `grpc`, `kubernetes.io/h2c` → HTTP; `tcp`,
//!   `https`, `tls` → opaque TCP; otherwise detected.
//! - Endpoints: the addresses of the Service's EndpointSlices (label
//!   `kubernetes.io/service-name`) of the VIP's family, `ready` ones only (`ready`
//!   unset counts as ready, as the API says it must). If the VIP's family has none,
//!   the other family's ready addresses are used. The same family's addresses with
//!   `ready: false` — a pod not ready yet, or terminating (`serving` may still be
//!   true while it drains) — are the service's *not ready* endpoints: never sent
//!   new traffic, but still its pods ([`Contribution::not_ready`]).
//! - The Service's annotations `weft.dev/mtls` and `weft.dev/authorization` are its
//!   mutual TLS mode and authorization entries ([`crate::annotations`]).
//! - Limits, said plainly: one target port per service port (pods of one Service
//!   that resolve a named port to different numbers get the first slice's number);
//!   a dual-stack Service is routed on its primary ClusterIP only.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::num::NonZeroU16;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service as K8sService;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::ResourceExt as _;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

use crate::error::ConfigError;
use crate::model::{Name, Policy, Port, Protocol, Service, SourceKind};
use crate::source::{Contribution, Source};

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The mesh name of Service `name` in `namespace`: `name.namespace`.
pub fn service_name(namespace: &str, name: &str) -> Result<Name, String> {
    Name::try_from(format!("{name}.{namespace}"))
}

/// What [`map`] made, and what it skipped (with why, for the log).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapped {
    pub contribution: Contribution,
    pub skipped: Vec<String>,
    /// Services mapped in spite of a malformed annotation (failed closed).
    pub warnings: Vec<String>,
}

fn protocol(app_protocol: Option<&str>) -> Protocol {
    match app_protocol.map(str::to_ascii_lowercase).as_deref() {
        Some("http" | "http2" | "grpc" | "kubernetes.io/h2c") => Protocol::Http,
        Some("tcp" | "https" | "tls" | "kubernetes.io/wss") => Protocol::Tcp,
        _ => Protocol::Auto,
    }
}

fn port_number(n: i32) -> Option<NonZeroU16> {
    u16::try_from(n).ok().and_then(NonZeroU16::new)
}

fn family_of(address_type: &str) -> Option<bool> {
    match address_type {
        "IPv4" => Some(true),
        "IPv6" => Some(false),
        _ => None, // FQDN: not an address.
    }
}

/// Maps Services and EndpointSlices (any namespaces, any order) to the mesh.
pub fn map<'a>(
    services: impl IntoIterator<Item = &'a K8sService>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Mapped {
    // Slices by (namespace, service name).
    let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        let Some(svc) = slice.labels().get(SERVICE_NAME_LABEL) else {
            continue;
        };
        by_service
            .entry((slice.namespace().unwrap_or_default(), svc.clone()))
            .or_default()
            .push(slice);
    }
    let mut out = Mapped::default();
    for svc in services {
        let ns = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        let key = format!("{ns}/{name}");
        match map_one(svc, by_service.get(&(ns.clone(), name.clone()))) {
            Ok((mut service, not_ready)) => match service_name(&ns, &name) {
                Ok(n) => {
                    let problems = crate::annotations::apply(svc.annotations(), &mut service);
                    out.warnings
                        .extend(problems.into_iter().map(|p| format!("{key}: {p}")));
                    if !not_ready.is_empty() {
                        out.contribution.not_ready.insert(n.clone(), not_ready);
                    }
                    out.contribution.services.insert(n, service);
                }
                Err(e) => out.skipped.push(format!("{key}: {e}")),
            },
            Err(why) => out.skipped.push(format!("{key}: {why}")),
        }
    }
    out
}

/// The service, and its not-ready endpoint addresses.
fn map_one(
    svc: &K8sService,
    slices: Option<&Vec<&EndpointSlice>>,
) -> Result<(Service, Vec<IpAddr>), String> {
    let spec = svc.spec.as_ref().ok_or("no spec")?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return Err("ExternalName: no VIP".to_owned());
    }
    let ip = spec
        .cluster_ips
        .as_ref()
        .and_then(|ips| ips.first())
        .or(spec.cluster_ip.as_ref())
        .filter(|ip| !ip.is_empty() && ip.as_str() != "None")
        .ok_or("headless: no VIP")?;
    let vip: IpAddr = ip
        .parse()
        .map_err(|_| format!("clusterIP {ip:?} is not an address"))?;
    let slices: Vec<&EndpointSlice> = slices.cloned().unwrap_or_default();
    let mut ports = Vec::new();
    for sp in spec.ports.iter().flatten() {
        if sp.protocol.as_deref().unwrap_or("TCP") != "TCP" {
            continue;
        }
        let Some(port) = port_number(sp.port) else {
            continue;
        };
        let resolved = slices
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .find(|p| {
                p.name.as_deref().unwrap_or("") == sp.name.as_deref().unwrap_or("")
                    && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
            })
            .and_then(|p| p.port.and_then(port_number));
        let target_port = resolved
            .or(match &sp.target_port {
                Some(IntOrString::Int(n)) => port_number(*n),
                Some(IntOrString::String(_)) => None,
                None => Some(port),
            })
            .unwrap_or(port);
        ports.push(Port {
            port,
            target_port,
            protocol: protocol(sp.app_protocol.as_deref()),
        });
    }
    if ports.is_empty() {
        return Err("no TCP port".to_owned());
    }
    // The addresses of one family whose `ready` is (or is not) false.
    let addresses = |want_v4: bool, ready: bool| -> BTreeSet<IpAddr> {
        slices
            .iter()
            .filter(|s| family_of(&s.address_type) == Some(want_v4))
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| (e.conditions.as_ref().and_then(|c| c.ready) != Some(false)) == ready)
            .flat_map(|e| e.addresses.iter())
            .filter_map(|a| a.parse::<IpAddr>().ok())
            .filter(|ip| ip.is_ipv4() == want_v4)
            .collect()
    };
    let mut v4 = vip.is_ipv4();
    let mut endpoints = addresses(v4, true);
    if endpoints.is_empty() && !addresses(!v4, true).is_empty() {
        v4 = !v4;
        endpoints = addresses(v4, true);
    }
    // An address ready in one slice and not in another is ready.
    let not_ready = addresses(v4, false)
        .into_iter()
        .filter(|ip| !endpoints.contains(ip))
        .collect();
    Ok((
        Service {
            vip,
            ports,
            endpoints: endpoints.into_iter().collect(),
            policy: Policy::default(),
            mtls: Default::default(),
            authorization: Vec::new(),
        },
        not_ready,
    ))
}

/// Objects of one kind as a watch has delivered them, keyed by namespace/name.
#[derive(Debug)]
pub struct Store<K> {
    items: BTreeMap<(String, String), K>,
    /// Objects of a re-list in progress (between `Init` and `InitDone`).
    relist: Option<BTreeMap<(String, String), K>>,
    /// A first complete list has arrived.
    ready: bool,
}

impl<K> Default for Store<K> {
    fn default() -> Self {
        Store {
            items: BTreeMap::new(),
            relist: None,
            ready: false,
        }
    }
}

impl<K: kube::Resource + Clone> Store<K> {
    /// Applies one watcher event; `true` when the visible set may have changed.
    pub fn apply(&mut self, event: Event<K>) -> bool {
        let key = |k: &K| (k.namespace().unwrap_or_default(), k.name_any());
        match event {
            Event::Apply(k) => {
                self.items.insert(key(&k), k);
                self.ready
            }
            Event::Delete(k) => {
                self.items.remove(&key(&k));
                self.ready
            }
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(k) => {
                self.relist
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key(&k), k);
                false
            }
            Event::InitDone => {
                // A re-list replaces everything at once: what was deleted while the
                // watch was down is gone now.
                self.items = self.relist.take().unwrap_or_default();
                self.ready = true;
                true
            }
        }
    }

    /// Whether a first complete list has arrived.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// The objects.
    pub fn items(&self) -> impl Iterator<Item = &K> {
        self.items.values()
    }

    /// The object `name` in `namespace`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&K> {
        self.items.get(&(namespace.to_owned(), name.to_owned()))
    }
}

/// Services and EndpointSlices as watched.
#[derive(Debug, Default)]
pub struct Cache {
    pub services: Store<K8sService>,
    pub slices: Store<EndpointSlice>,
}

impl Cache {
    /// Both lists have arrived.
    pub fn is_ready(&self) -> bool {
        self.services.is_ready() && self.slices.is_ready()
    }

    /// The mesh they map to.
    pub fn map(&self) -> Mapped {
        map(self.services.items(), self.slices.items())
    }
}

/// What the watch tasks tell the source.
enum Note {
    Changed,
    Failed(String),
}

/// Watches Services and EndpointSlices in every namespace (a thin loop: kube's
/// watcher, with its default backoff, feeding the [`Cache`]).
#[derive(Debug)]
pub struct KubernetesSource {
    cache: Arc<Mutex<Cache>>,
    notes: mpsc::Receiver<Note>,
    last: Option<Contribution>,
    /// The last thing heard was a failure: the next good state is reported even if
    /// unchanged, to clear it.
    failed: bool,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Note::Changed => f.write_str("Changed"),
            Note::Failed(e) => write!(f, "Failed({e})"),
        }
    }
}

/// How long changes are gathered before a new state is made (a rollout changes many
/// slices in a burst).
const SETTLE: Duration = Duration::from_millis(100);

impl KubernetesSource {
    /// A client with the in-cluster configuration or the kubeconfig (`KUBECONFIG`,
    /// `~/.kube/config`).
    pub async fn client() -> Result<kube::Client, ConfigError> {
        kube::Client::try_default()
            .await
            .map_err(|e| ConfigError::new("kubernetes", format!("no API client: {e}")))
    }

    /// Starts watching through `client`.
    pub fn watch(client: kube::Client) -> Self {
        let cache = Arc::new(Mutex::new(Cache::default()));
        let (tx, notes) = mpsc::channel(64);
        let tasks = vec![
            tokio::spawn(follow(
                kube::Api::<K8sService>::all(client.clone()),
                cache.clone(),
                tx.clone(),
                |c: &mut Cache, e| c.services.apply(e),
            )),
            tokio::spawn(follow(
                kube::Api::<EndpointSlice>::all(client),
                cache.clone(),
                tx,
                |c: &mut Cache, e| c.slices.apply(e),
            )),
        ];
        KubernetesSource {
            cache,
            notes,
            last: None,
            failed: false,
            tasks,
        }
    }

    /// The Services as watched, for the registration API's scope rule.
    pub fn registrants(&self) -> crate::auth::review::Registrants {
        crate::auth::review::Registrants::new(self.cache.clone())
    }
}

impl Drop for KubernetesSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn follow<K>(
    api: kube::Api<K>,
    cache: Arc<Mutex<Cache>>,
    tx: mpsc::Sender<Note>,
    apply: fn(&mut Cache, Event<K>) -> bool,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    let mut events = Box::pin(watcher::watcher(api, watcher::Config::default()).default_backoff());
    while let Some(event) = events.next().await {
        let note = match event {
            Ok(e) => {
                let changed = apply(&mut cache.lock().unwrap_or_else(|p| p.into_inner()), e);
                if !changed {
                    continue;
                }
                Note::Changed
            }
            Err(e) => Note::Failed(e.to_string()),
        };
        if tx.send(note).await.is_err() {
            return;
        }
    }
}

impl Source for KubernetesSource {
    fn describe(&self) -> String {
        "kubernetes (Services, EndpointSlices)".to_owned()
    }

    fn kind(&self) -> SourceKind {
        SourceKind::Kubernetes
    }

    async fn next(&mut self) -> Result<Contribution, ConfigError> {
        loop {
            let ready = self
                .cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_ready();
            if ready {
                let mapped = self.cache.lock().unwrap_or_else(|p| p.into_inner()).map();
                if self.failed || self.last.as_ref() != Some(&mapped.contribution) {
                    self.failed = false;
                    for s in &mapped.skipped {
                        tracing::debug!("kubernetes: not in the mesh: {s}");
                    }
                    for w in &mapped.warnings {
                        tracing::warn!("kubernetes: {w}");
                    }
                    self.last = Some(mapped.contribution.clone());
                    return Ok(mapped.contribution);
                }
            }
            let failure = match self.notes.recv().await {
                Some(Note::Changed) => {
                    tokio::time::sleep(SETTLE).await;
                    let mut failure = None;
                    while let Ok(note) = self.notes.try_recv() {
                        if let Note::Failed(e) = note {
                            failure = Some(e);
                        }
                    }
                    failure
                }
                Some(Note::Failed(e)) => Some(e),
                None => std::future::pending::<Option<String>>().await,
            };
            if let Some(e) = failure {
                self.failed = true;
                return Err(ConfigError::new(
                    "kubernetes",
                    format!("watch failed (retrying): {e}"),
                ));
            }
        }
    }
}
