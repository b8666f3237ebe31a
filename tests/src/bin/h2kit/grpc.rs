//! `h2kit grpc-load`: an open-loop gRPC client: unary `weft.faults.Echo/Call`
//! requests (a 100-byte payload, the id in metadata `x-req-id`) spread round robin
//! over [`CONNECTIONS`] tonic channels, each one long-lived HTTP/2 connection that
//! tonic makes again after it broke. A call succeeds with status OK; any other
//! status, including the ones tonic makes of a transport error or of an HTTP
//! error status from a proxy, is a failure; a weft sidecar's own error (its
//! `x-weft-error`) is recorded as `weft_error`.

use std::time::Duration;

use serde_json::{Map, Value};
use tonic::transport::{Channel, Endpoint};

use crate::load::{open_loop, Outcome, Schedule, CONNECTIONS, POST_BODY, TIMEOUT};
use crate::pb::echo_client::EchoClient;
use crate::pb::Payload;

/// Runs the load against `url` (`http://HOST:PORT`).
pub async fn load(url: &str, schedule: Schedule) -> Result<Value, String> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("{url}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let channels: Vec<Channel> = (0..CONNECTIONS).map(|_| endpoint.connect_lazy()).collect();
    Ok(open_loop(schedule, |id, i| {
        let client = EchoClient::new(channels[(i as usize) % CONNECTIONS].clone());
        call(client, id)
    })
    .await)
}

async fn call(mut client: EchoClient<Channel>, id: u64) -> Outcome {
    let mut req = tonic::Request::new(Payload {
        data: vec![b'x'; POST_BODY],
    });
    req.set_timeout(TIMEOUT);
    req.metadata_mut().insert(
        "x-req-id",
        id.to_string()
            .parse()
            .unwrap_or_else(|e| panic!("an id is ASCII: {e}")),
    );
    match client.call(req).await {
        Ok(_) => Outcome::Answer {
            status: "Ok".into(),
            ok: true,
            detail: Map::new(),
        },
        Err(status) => {
            let mut detail = Map::new();
            detail.insert("message".into(), status.message().into());
            // A proxy's gRPC-form error names its reason, as its HTTP one does.
            if let Some(e) = status.metadata().get("x-weft-error") {
                detail.insert(
                    "weft_error".into(),
                    String::from_utf8_lossy(e.as_bytes()).into(),
                );
            }
            Outcome::Answer {
                status: format!("{:?}", status.code()).into(),
                ok: false,
                detail,
            }
        }
    }
}
