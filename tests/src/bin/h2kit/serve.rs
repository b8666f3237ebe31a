//! `h2kit serve`: one replica's HTTP/2 app. Plain h2c (hyper's HTTP/2 server,
//! prior knowledge) on one port and gRPC (tonic) on another, in one process, so
//! that killing the process takes both down at once, as a replica dies. Every
//! request's id is logged on arrival ([`ReceivedLog`]): for h2c when hyper hands
//! over the request head, for gRPC in an interceptor, before the message is read.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::pb::echo_server::{Echo, EchoServer};
use crate::pb::Payload;
use crate::received::ReceivedLog;

/// The metadata (h2c: header) carrying a request's id.
pub const REQ_ID: &str = "x-req-id";

/// Serves h2c on `h2c_port` and gRPC on `grpc_port` until killed.
pub async fn run(
    h2c_port: u16,
    grpc_port: u16,
    name: &str,
    log: ReceivedLog,
) -> Result<(), String> {
    let bind = |port: u16| async move {
        TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
            .await
            .map_err(|e| format!("bind port {port}: {e}"))
    };
    let h2c = bind(h2c_port).await?;
    let grpc = bind(grpc_port).await?;
    println!("listening");
    let name = Bytes::from(name.to_owned());
    tokio::select! {
        r = serve_h2c(h2c, name.clone(), log.clone()) => r,
        r = serve_grpc(grpc, name, log) => r,
    }
}

/// Plain h2c: every request is answered 200 with the replica's name, its body
/// read first.
async fn serve_h2c(listener: TcpListener, name: Bytes, log: ReceivedLog) -> Result<(), String> {
    loop {
        let (stream, _) = listener
            .accept()
            .await
            .map_err(|e| format!("accept: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (name, log) = (name.clone(), log.clone());
        let svc = service_fn(move |req: Request<Incoming>| {
            log.record(req.headers().get(REQ_ID).map(|v| v.as_bytes()));
            let name = name.clone();
            async move {
                // A body that breaks off still gets its answer: nobody is left to
                // read it, and the id was logged already.
                let _ = req.into_body().collect().await;
                Ok::<_, Infallible>(Response::new(Full::new(name)))
            }
        });
        tokio::spawn(async move {
            let _ = http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// gRPC: `weft.faults.Echo/Call` answers with the replica's name.
async fn serve_grpc(listener: TcpListener, name: Bytes, log: ReceivedLog) -> Result<(), String> {
    let echo = EchoServer::with_interceptor(Replica { name }, move |req: tonic::Request<()>| {
        log.record(req.metadata().get(REQ_ID).map(|v| v.as_bytes()));
        Ok(req)
    });
    tonic::transport::Server::builder()
        .add_service(echo)
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await
        .map_err(|e| format!("gRPC server: {e}"))
}

struct Replica {
    name: Bytes,
}

#[tonic::async_trait]
impl Echo for Replica {
    async fn call(
        &self,
        _req: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        Ok(tonic::Response::new(Payload {
            data: self.name.to_vec(),
        }))
    }
}
