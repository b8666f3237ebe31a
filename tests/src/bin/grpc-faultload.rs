//! The open-loop gRPC load of the fault tests: `grpc-faultload URL RATE SECONDS
//! FIRST_ID`. Unary calls (to `grpc-app`) leave at RATE per second whatever the
//! answers do, over one tonic channel (HTTP/2, calls multiplexed), each with
//! `x-req-id: N` metadata and a 10 s deadline; RATE x SECONDS calls, then it exits.
//! Prints one JSON line like `tools/faultload.py`: {"sent", "succeeded", "failed",
//! "statuses", "failures"}; a call succeeds with status OK.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tonic::transport::Endpoint;
use weft_api::discovery::DrainRequest;
use weft_api::DiscoveryClient;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Calls by gRPC code, and the failures.
type Results = (BTreeMap<String, u64>, Vec<Value>);

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, rate, seconds, first_id] = args.as_slice() else {
        eprintln!("usage: grpc-faultload URL RATE SECONDS FIRST_ID");
        std::process::exit(2);
    };
    let rate: f64 = rate.parse().expect("RATE");
    let seconds: f64 = seconds.parse().expect("SECONDS");
    let first_id: u64 = first_id.parse().expect("FIRST_ID");
    let channel = Endpoint::from_shared(url.clone())
        .expect("URL")
        .timeout(TIMEOUT)
        .connect_lazy();
    let client = DiscoveryClient::new(channel);
    let results: Arc<Mutex<Results>> = Arc::default();
    let total = (rate * seconds) as u64;
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        let (mut client, results) = (client.clone(), results.clone());
        tasks.push(tokio::spawn(async move {
            let id = first_id + i;
            let mut req = tonic::Request::new(DrainRequest::default());
            req.metadata_mut()
                .insert("x-req-id", id.to_string().parse().expect("ascii"));
            let outcome = tokio::time::timeout(TIMEOUT, client.drain(req)).await;
            let (code, message) = match outcome {
                Ok(Ok(_)) => ("OK".to_owned(), String::new()),
                Ok(Err(status)) => (
                    format!("{:?}", status.code()),
                    match status.metadata().get("x-weft-error") {
                        Some(e) => format!("{} (x-weft-error: {e:?})", status.message()),
                        None => status.message().to_owned(),
                    },
                ),
                Err(_) => ("timeout".to_owned(), String::new()),
            };
            let mut r = results.lock().unwrap_or_else(|e| e.into_inner());
            *r.0.entry(code.clone()).or_default() += 1;
            if code != "OK" {
                r.1.push(json!({"id": id, "method": "POST", "error": code, "message": message}));
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let (statuses, mut failures) =
        std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
    failures.sort_by_key(|f| f["id"].as_u64());
    println!(
        "{}",
        json!({
            "sent": total,
            "succeeded": total - failures.len() as u64,
            "failed": failures.len(),
            "statuses": statuses,
            "failures": failures,
        })
    );
}
