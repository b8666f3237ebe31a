//! `weftctl dashboard`: where the running local mesh's page is and how to reach
//! it, then what it shows now, read from the same data API the page polls
//! (`/ui/api/mesh`). The controller lives in the mesh's node namespace, which has
//! no route to this machine's network, so a browser has to run in that namespace;
//! weftctl says how rather than forwarding a port out of the mesh.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use crate::podhttp;
use crate::state::{self, MeshState};

/// The page's address with the mesh's read-only token in its fragment (which a
/// browser never sends to the server), or without a token when none can be read.
pub fn url(mesh: &MeshState) -> String {
    let base = format!("http://{}/ui/", mesh.controller_http);
    match weft_localmesh::credentials::viewer_token(&mesh.run_dir) {
        Ok(token) => format!("{base}#token={token}"),
        Err(_) => base,
    }
}

/// The page's address and how to open it (what `weftctl up` prints too).
pub fn describe(mesh: &MeshState) -> String {
    let url = url(mesh);
    format!(
        "The mesh page: {url}\n\
         (the token in it is read-only). It is served in the node namespace {ns}, which has\n\
         no route to this machine's network: open it from there, e.g.\n  \
         sudo ip netns exec {ns} chromium --headless --no-sandbox --window-size=1280,1700 --screenshot=mesh.png '{url}'\n\
         and its data (what `weftctl dashboard` summarizes):\n  \
         sudo ip netns exec {ns} curl -s -H 'Authorization: Bearer {token}' http://{addr}/ui/api/mesh\n",
        ns = mesh.node_netns,
        addr = mesh.controller_http,
        token = weft_localmesh::credentials::viewer_token(&mesh.run_dir).unwrap_or_default(),
    )
}

/// `weftctl dashboard`: the address, then the page's data as text.
pub fn run(state_dir: &Path) -> Result<()> {
    let mesh = state::require(state_dir)?;
    print!("{}", describe(&mesh));
    let token = weft_localmesh::credentials::viewer_token(&mesh.run_dir)?;
    let data = podhttp::get_json(
        &mesh.node_netns,
        mesh.controller_http,
        "/ui/api/mesh",
        Some(&token),
    )?;
    print!(
        "\nWhat it shows now (GET /ui/api/mesh):\n{}",
        summary(&data)
    );
    Ok(())
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// The page's data in a few lines: services and their pods, edges with their
/// counts and signals, pods' sidecars, bad edits.
pub fn summary(data: &Value) -> String {
    let mut out = String::new();
    let list = |key: &str| data[key].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "  services:");
    for s in list("services") {
        let pods: Vec<String> = s["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                e["pod"]
                    .as_str()
                    .or(e["address"].as_str())
                    .unwrap_or("?")
                    .to_owned()
            })
            .collect();
        let _ = writeln!(
            out,
            "    {}: {}",
            s["name"].as_str().unwrap_or("?"),
            if pods.is_empty() {
                "no endpoints".to_owned()
            } else {
                pods.join(", ")
            }
        );
    }
    let _ = writeln!(out, "  edges:");
    let edges = list("edges");
    if edges.is_empty() {
        let _ = writeln!(
            out,
            "    none yet (no traffic, or the first rounds are still being read)"
        );
    }
    for e in edges {
        let pct = |v: &Value| {
            v.as_f64()
                .map_or("-".to_owned(), |s| format!("{:.1}%", s * 100.0))
        };
        let ms = |v: &Value| v.as_f64().map_or("-".to_owned(), |s| format!("{s:.1} ms"));
        let _ = writeln!(
            out,
            "    {} -> {}: {} requests, {} connections; now {:.1}/s, {} ok, p99 {}",
            e["source"].as_str().unwrap_or("?"),
            e["destination"].as_str().unwrap_or("?"),
            num(&e["requests"]),
            num(&e["connections"]),
            num(&e["rate_per_s"]),
            pct(&e["success"]),
            ms(&e["p99_ms"]),
        );
    }
    let _ = writeln!(out, "  pods:");
    for p in list("pods") {
        let ready = match p["ready"].as_bool() {
            Some(true) => "ready".to_owned(),
            Some(false) => format!("not ready ({})", p["ready_detail"].as_str().unwrap_or("")),
            None => format!("unreachable ({})", p["ready_detail"].as_str().unwrap_or("")),
        };
        let live = p["connections"].as_array().map(|c| {
            c.iter()
                .filter(|c| c["state"].as_str() == Some("open"))
                .count()
        });
        let conns = live.map_or_else(
            || {
                format!(
                    "connections: {}",
                    p["connections_error"].as_str().unwrap_or("?")
                )
            },
            |n| format!("{n} live connections"),
        );
        let _ = writeln!(
            out,
            "    {} ({}): {ready}, {conns}",
            p["pod"].as_str().unwrap_or("?"),
            p["service"].as_str().unwrap_or("?"),
        );
    }
    let edits = list("bad_edits");
    let _ = writeln!(
        out,
        "  bad edits: {}",
        if edits.is_empty() { "none" } else { "" }
    );
    for e in edits {
        let _ = writeln!(out, "    {}", e["display"].as_str().unwrap_or("?"));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_summary_names_edges_with_their_counts() {
        let data = serde_json::json!({
            "services": [{"name": "backend", "endpoints": [{"address": "10.211.0.2", "pod": "backend-0"}]}],
            "edges": [{"source": "frontend", "destination": "backend", "requests": 42.0,
                       "connections": 3.0, "rate_per_s": 2.5, "success": 1.0, "p99_ms": 4.0}],
            "pods": [{"pod": "backend-0", "service": "backend", "ready": true, "connections": [{"state": "open"}]}],
            "bad_edits": [{"display": "/m.yaml:3:5: bad"}],
        });
        let s = summary(&data);
        assert!(s.contains("backend: backend-0"), "{s}");
        assert!(
            s.contains(
                "frontend -> backend: 42 requests, 3 connections; now 2.5/s, 100.0% ok, p99 4.0 ms"
            ),
            "{s}"
        );
        assert!(
            s.contains("backend-0 (backend): ready, 1 live connections"),
            "{s}"
        );
        assert!(s.contains("/m.yaml:3:5: bad"), "{s}");
    }
}
