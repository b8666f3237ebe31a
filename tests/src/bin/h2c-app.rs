//! A replica app for the fault tests that speaks h2c (HTTP/2 prior knowledge) only,
//! like a gRPC server: `h2c-app PORT NAME LOG`. Every request's `x-req-id` is
//! appended to LOG as it arrives (one line each, O_APPEND: kept through a kill -9),
//! its body read, and the answer is 200 with NAME. Prints `listening` once bound.
//! It knows nothing about weft.

use std::convert::Infallible;
use std::io::Write as _;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [port, name, log] = args.as_slice() else {
        eprintln!("usage: h2c-app PORT NAME LOG");
        std::process::exit(2);
    };
    let log = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(log)?,
    ));
    let name = Bytes::from(name.clone());
    let listener =
        tokio::net::TcpListener::bind(("::", port.parse::<u16>().expect("PORT"))).await?;
    println!("listening");
    loop {
        let (stream, _) = listener.accept().await?;
        let (log, name) = (log.clone(), name.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let (log, name) = (log.clone(), name.clone());
                async move {
                    if let Some(id) = req.headers().get("x-req-id") {
                        let mut line = id.as_bytes().to_vec();
                        line.push(b'\n');
                        // One write per line: atomic with O_APPEND.
                        let _ = log
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .write_all(&line);
                    }
                    let _ = req.into_body().collect().await;
                    Ok::<_, Infallible>(Response::new(Full::new(name)))
                }
            });
            let _ = http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
