//! weft-controller: the service registry and the discovery API served to proxies.
//!
//! Not built yet: this crate is a placeholder so the workspace layout is fixed from the
//! start. Until it exists, weft-proxy runs as a passthrough sidecar that forwards every
//! connection to its original destination.
