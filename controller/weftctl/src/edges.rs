//! The topology as Graphviz DOT for `weftctl graph`; the edges and their totals
//! are the controller library's ([`weft_controller::edges`]), shared with its
//! mesh page.

use std::collections::BTreeMap;

pub use weft_controller::edges::{stats, totals, Edge, EdgeStats, EdgeTotals};

/// The topology as Graphviz DOT: one node per service, one arrow per edge,
/// labelled with its requests (or connections when it carried no HTTP).
pub fn dot(edges: &BTreeMap<Edge, EdgeTotals>) -> String {
    let mut s = String::from(
        "digraph weft {\n  rankdir=LR;\n  node [shape=box, style=rounded, fontname=\"sans-serif\"];\n",
    );
    let mut nodes: Vec<&str> = edges
        .keys()
        .flat_map(|(a, b)| [a.as_str(), b.as_str()])
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    for n in nodes {
        s.push_str(&format!("  \"{}\";\n", escape(n)));
    }
    for ((from, to), t) in edges {
        let label = if t.requests > 0.0 {
            format!("{} req, {} failed", t.requests, t.failures)
        } else {
            format!("{} conn", t.connections)
        };
        s.push_str(&format!(
            "  \"{}\" -> \"{}\" [label=\"{label}\"];\n",
            escape(from),
            escape(to)
        ));
    }
    s.push_str("}\n");
    s
}

fn escape(name: &str) -> String {
    name.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const FRONTEND: &str = r#"
weft_http_requests_total{destination_service="backend",direction="outbound",method="GET",source_service="frontend",status_code="200",tls="true"} 90
weft_http_requests_total{destination_service="backend",direction="outbound",method="GET",source_service="frontend",status_code="503",tls="false"} 10
"#;
    const BACKEND: &str = r#"
weft_tcp_connections_opened_total{destination_service="backend",direction="inbound",source_service="unknown"} 3
"#;

    fn page(text: &str) -> Vec<weft_runtime::prom_text::Sample> {
        weft_runtime::prom_text::parse(text)
    }

    #[test]
    fn dot_draws_every_edge_once() {
        let d = dot(&totals(&[page(FRONTEND), page(BACKEND)]));
        assert!(d.starts_with("digraph weft {"), "{d}");
        assert!(
            d.contains("\"frontend\" -> \"backend\" [label=\"100 req, 10 failed\"];"),
            "{d}"
        );
        assert!(
            d.contains("\"unknown\" -> \"backend\" [label=\"3 conn\"];"),
            "{d}"
        );
        assert_eq!(d.matches("  \"backend\";").count(), 1, "{d}");
        assert!(d.ends_with("}\n"));
    }
}
