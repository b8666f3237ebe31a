//! `floodkit serve`: the app behind the floods. Its large body is made as the
//! client takes it (never held whole), so what grows while a client does not read
//! is the proxies' business, not the app's.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One chunk of a large body.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Serves HTTP/1.1 on every address of the pod at `port` until killed.
pub async fn run(port: u16) -> Result<(), String> {
    let listener = TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|e| format!("bind {port}: {e}"))?;
    println!("listening");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

async fn answer(req: Request<Incoming>) -> Result<Response<Zeros>, Infallible> {
    let left = req
        .uri()
        .path()
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse().ok());
    Ok(match left {
        Some(left) => Response::new(Zeros { left }),
        None => Response::new(Zeros::ok()),
    })
}

/// A body of `left` zero bytes, or the two bytes `ok`.
struct Zeros {
    left: u64,
}

impl Zeros {
    fn ok() -> Zeros {
        Zeros { left: u64::MAX }
    }
}

impl Body for Zeros {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == u64::MAX {
            self.left = 0;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"ok")))));
        }
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(ZEROS.len() as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&ZEROS[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self.left {
            u64::MAX => hyper::body::SizeHint::with_exact(2),
            n => hyper::body::SizeHint::with_exact(n),
        }
    }
}
