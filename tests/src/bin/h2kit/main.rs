//! h2kit: the fault suites' HTTP/2 tools, the h2c and gRPC counterparts of
//! `tools/httpkit.py serve` and `tools/faultload.py`. They know nothing about weft:
//! an unmodified app and unmodified clients, run in pods by the tier-2 tests.
//!
//! ```text
//! h2kit serve H2C_PORT GRPC_PORT NAME LOG
//!     one replica's app: plain h2c (prior knowledge) on H2C_PORT, gRPC
//!     (weft.faults.Echo/Call) on GRPC_PORT, both answering NAME; the x-req-id of
//!     every request is appended to LOG as it arrives (one line each, O_APPEND, so
//!     kept through a kill -9). Prints "listening" once both ports are bound.
//! h2kit h2c-load URL RATE SECONDS FIRST_ID
//!     open-loop h2c load: RATE requests/s for SECONDS over a few long-lived
//!     prior-knowledge HTTP/2 connections, every other one a POST with a 100-byte
//!     body; succeeds with a status below 500.
//! h2kit grpc-load URL RATE SECONDS FIRST_ID
//!     open-loop gRPC load: RATE unary calls/s for SECONDS over a few channels;
//!     succeeds with status OK.
//! ```
//!
//! Both loads send ids FIRST_ID, FIRST_ID + 1, ... (in `x-req-id`), give each
//! request 10 s, stop by themselves after RATE x SECONDS requests, and print one
//! JSON line as faultload.py does:
//! `{"sent", "succeeded", "failed", "statuses", "failures": [{"id", "method",
//! "status" | "error", ...}]}`.

mod grpc;
mod h2c;
mod load;
mod received;
mod serve;

/// The generated gRPC service (`proto/faults.proto`).
mod pb {
    tonic::include_proto!("weft.faults");
}

use std::process::ExitCode;

use load::Schedule;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("h2kit: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    match args {
        [cmd, h2c_port, grpc_port, name, log] if cmd == "serve" => {
            let log = received::ReceivedLog::open(log)?;
            let (h2c_port, grpc_port) = (number(h2c_port)?, number(grpc_port)?);
            runtime.block_on(serve::run(h2c_port, grpc_port, name, log))
        }
        [cmd, url, rate, seconds, first_id] if cmd == "h2c-load" || cmd == "grpc-load" => {
            let schedule = Schedule {
                rate: number(rate)?,
                seconds: number(seconds)?,
                first_id: number(first_id)?,
            };
            let report = if cmd == "h2c-load" {
                runtime.block_on(h2c::load(url, schedule))?
            } else {
                runtime.block_on(grpc::load(url, schedule))?
            };
            println!("{report}");
            Ok(())
        }
        _ => Err(format!(
            "usage: h2kit serve H2C_PORT GRPC_PORT NAME LOG | \
             h2kit h2c-load|grpc-load URL RATE SECONDS FIRST_ID (got {args:?})"
        )),
    }
}

fn number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("not a number: {s}"))
}
