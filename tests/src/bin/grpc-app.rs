//! A gRPC replica app for the fault tests: `grpc-app PORT LOG`, a tonic server
//! whose unary method (the `Drain` RPC of weft's discovery API, used here only as a
//! ready-made unary gRPC method; `Watch` is unimplemented) logs the call's
//! `x-req-id` metadata to LOG (one line each, O_APPEND: kept through a kill -9) and
//! answers OK. Prints `listening` once bound. It knows nothing about weft.

use std::io::Write as _;
use std::sync::{Arc, Mutex};

use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};
use weft_api::discovery::{DrainRequest, DrainResponse, MeshUpdate, WatchRequest};
use weft_api::{Discovery, DiscoveryServer};

struct App {
    log: Arc<Mutex<std::fs::File>>,
}

#[tonic::async_trait]
impl Discovery for App {
    type WatchStream = tokio_stream::Empty<Result<MeshUpdate, Status>>;

    async fn watch(&self, _: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("not this app"))
    }

    async fn drain(&self, req: Request<DrainRequest>) -> Result<Response<DrainResponse>, Status> {
        if let Some(id) = req.metadata().get("x-req-id") {
            let mut line = id.as_bytes().to_vec();
            line.push(b'\n');
            // One write per line: atomic with O_APPEND.
            let _ = self
                .log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_all(&line);
        }
        Ok(Response::new(DrainResponse {}))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [port, log] = args.as_slice() else {
        eprintln!("usage: grpc-app PORT LOG");
        std::process::exit(2);
    };
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)?;
    let listener = tokio::net::TcpListener::bind(("::", port.parse::<u16>()?)).await?;
    println!("listening");
    tonic::transport::Server::builder()
        .add_service(DiscoveryServer::new(App {
            log: Arc::new(Mutex::new(log)),
        }))
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await?;
    Ok(())
}
