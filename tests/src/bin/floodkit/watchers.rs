//! `floodkit watchers`: discovery subscribers that take their snapshot and then
//! only hold their stream; the test makes them vanish (their packets dropped in
//! their namespace, then the process killed), as a pod does whose node is lost.

use std::time::Duration;

use tokio::task::JoinSet;
use tonic::transport::Endpoint;
use weft_api::discovery::WatchRequest;
use weft_api::DiscoveryClient;

/// How long one subscriber may take to connect and get its snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);
/// Subscribes in flight at once.
const OPENING: usize = 100;

/// A Watch held open, with the client whose connection carries it.
type Stream = (
    DiscoveryClient<tonic::transport::Channel>,
    tonic::Streaming<weft_api::discovery::MeshUpdate>,
);

/// Opens `count` Watches on `url` as the caller of the token in `token_file`,
/// each on its own connection; holds them for `hold` after all got a snapshot.
pub async fn run(url: &str, token_file: &str, count: usize, hold: Duration) -> Result<(), String> {
    let token = std::fs::read_to_string(token_file)
        .map_err(|e| format!("{token_file}: {e}"))?
        .trim()
        .to_owned();
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}")
        .parse()
        .map_err(|e| format!("token: {e}"))?;
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| format!("{url}: {e}"))?;
    let mut held: Vec<Stream> = Vec::with_capacity(count);
    let mut left = count;
    while left > 0 {
        let batch = left.min(OPENING);
        left -= batch;
        let mut set = JoinSet::new();
        for i in 0..batch {
            let (endpoint, bearer) = (endpoint.clone(), bearer.clone());
            let id = format!("watcher-{}", held.len() + i);
            set.spawn(tokio::time::timeout(
                SNAPSHOT_TIMEOUT,
                subscribe(endpoint, bearer, id),
            ));
        }
        while let Some(done) = set.join_next().await {
            let stream = done
                .map_err(|e| format!("a subscriber task failed: {e}"))?
                .map_err(|_| "no snapshot in time".to_owned())??;
            held.push(stream);
        }
    }
    println!("snapshots={}", held.len());
    tokio::time::sleep(hold).await;
    Ok(())
}

/// One Watch on a connection of its own (a channel per subscriber: the server
/// sees as many connections as subscribers), after its first update.
async fn subscribe(
    endpoint: Endpoint,
    bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    id: String,
) -> Result<Stream, String> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut client = DiscoveryClient::new(channel);
    let mut request = tonic::Request::new(WatchRequest {
        service: "watchers".to_owned(),
        proxy_id: id,
        addresses: Vec::new(),
        draining: false,
        mtls: true,
    });
    request.metadata_mut().insert("authorization", bearer);
    let mut stream = client
        .watch(request)
        .await
        .map_err(|e| format!("watch: {e}"))?
        .into_inner();
    match stream.message().await {
        Ok(Some(_)) => Ok((client, stream)),
        Ok(None) => Err("the stream ended before its snapshot".to_owned()),
        Err(e) => Err(format!("snapshot: {e}")),
    }
}
