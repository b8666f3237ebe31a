//! The open-loop schedule both loads share: request `i` leaves at `start + i /
//! rate` whatever the answers do (so a fault shows as failed requests, never as a
//! slower client that sent fewer), each bounded by [`TIMEOUT`]; then the tally,
//! printed as faultload.py prints it.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long a request has, from leaving to its whole answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How many long-lived connections (h2c) or channels (gRPC) a load keeps.
pub const CONNECTIONS: usize = 4;
/// A POST's body size.
pub const POST_BODY: usize = 100;

/// How many requests, how fast, and the first id.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub rate: f64,
    pub seconds: f64,
    pub first_id: u64,
}

/// How one request ended.
#[derive(Debug)]
pub enum Outcome {
    /// An answer: its status (an HTTP code, or a gRPC code's name), whether that
    /// is a success, and what a failed one said (extra fields of its failure).
    Answer {
        status: Value,
        ok: bool,
        detail: Map<String, Value>,
    },
    /// No answer: the connection failed, or the timeout passed.
    Error(String),
}

/// Sends request `i` of the schedule through `one(id, i)` at its time, waits for
/// every one, and returns the JSON report.
pub async fn open_loop<F, Fut>(schedule: Schedule, one: F) -> Value
where
    F: Fn(u64, u64) -> Fut,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let total = (schedule.rate * schedule.seconds) as u64;
    let start = Instant::now() + Duration::from_millis(50);
    let mut running = JoinSet::new();
    for i in 0..total {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / schedule.rate)).await;
        let id = schedule.first_id + i;
        let request = one(id, i);
        running.spawn(async move {
            let outcome = tokio::time::timeout(TIMEOUT, request)
                .await
                .unwrap_or_else(|_| Outcome::Error("Timeout".to_owned()));
            (id, outcome)
        });
    }
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    while let Some(done) = running.join_next().await {
        let (id, outcome) = done.unwrap_or_else(|e| panic!("a request task failed: {e}"));
        let method = method_of(id);
        match outcome {
            Outcome::Answer { status, ok, detail } => {
                *statuses.entry(status_key(&status)).or_default() += 1;
                if !ok {
                    let mut f = Map::new();
                    f.insert("id".into(), id.into());
                    f.insert("method".into(), method.into());
                    f.insert("status".into(), status);
                    f.extend(detail);
                    failures.push(Value::Object(f));
                }
            }
            Outcome::Error(error) => {
                failures.push(json!({ "id": id, "method": method, "error": error }));
            }
        }
    }
    failures.sort_by_key(|f| f["id"].as_u64());
    json!({
        "sent": total,
        "succeeded": total - failures.len() as u64,
        "failed": failures.len(),
        "statuses": statuses,
        "failures": failures,
    })
}

/// Every other request is a POST (odd ids), as faultload.py sends them.
pub fn method_of(id: u64) -> &'static str {
    if id % 2 == 1 {
        "POST"
    } else {
        "GET"
    }
}

fn status_key(status: &Value) -> String {
    match status {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
