//! floodkit: the flood suite's app and load generators (`tests/tests/floods.rs`).
//! Like h2kit they know nothing about weft: an unmodified HTTP/1.1 app and plain
//! clients, run in pods by the tier-2 tests (in eBPF mode inside the pod's cgroup,
//! so their connections are captured). Every generator is bounded in count and
//! time and stops by itself.
//!
//! ```text
//! floodkit serve PORT
//!     HTTP/1.1 app: `GET /bytes/N` answers N zero bytes, streamed in 64 KiB
//!     chunks as the client takes them; anything else `ok`. Prints "listening".
//! floodkit load URL RATE SECONDS
//!     a well-behaved client: open-loop keep-alive GETs, RATE a second for
//!     SECONDS, each timed from when it was due (so a stall shows in the tail);
//!     prints {"sent","ok","failed","errors","p50_ms","p99_ms","max_ms"}.
//! floodkit silent ADDR COUNT SECONDS
//!     COUNT connections that send nothing; prints "open=N failed=M" once made,
//!     holds them until SECONDS after the start, then closes them and prints
//!     "closed".
//! floodkit slowloris ADDR CLIENTS SECONDS
//!     CLIENTS at once (started evenly over the first second), each sending a request line and then one header byte a
//!     second until the server answers or closes, then again, until SECONDS
//!     have passed (the last ones run to their end); prints "started" once all
//!     are connected, then {"connections","answered_408","other_answers",
//!     "reset","eof","connect_errors","unfinished"}.
//! floodkit stall URL SECONDS
//!     sends `GET URL` and never reads a byte; prints "sent", exits after SECONDS.
//! floodkit over ADDR COUNT
//!     COUNT connections at once that send nothing and wait up to 3 s for the
//!     server to end them; prints {"refused","held","connect_errors"} (refused:
//!     reset or closed by the server, also a reset that came before the
//!     connect was seen to complete).
//! floodkit watchers URL TOKEN_FILE COUNT SECONDS
//!     COUNT discovery Watches (weft.discovery.v1), each on its own connection,
//!     as a caller holding the token in TOKEN_FILE; prints "snapshots=N" once each
//!     has received its first update, then holds them until SECONDS have passed.
//! ```

mod clients;
mod serve;
mod watchers;

use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    raise_nofile();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floodkit: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Tens of thousands of sockets: the soft descriptor limit goes up to the hard one
/// (the test raised it before starting us).
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["serve", port] => runtime.block_on(serve::run(number(port)?)),
        ["load", url, rate, seconds] => {
            let report = runtime.block_on(clients::load(url, number(rate)?, secs(seconds)?))?;
            println!("{report}");
            Ok(())
        }
        ["silent", addr, count, seconds] => {
            runtime.block_on(clients::silent(addr, number(count)?, secs(seconds)?))
        }
        ["slowloris", addr, clients, seconds] => {
            let report =
                runtime.block_on(clients::slowloris(addr, number(clients)?, secs(seconds)?))?;
            println!("{report}");
            Ok(())
        }
        ["stall", url, seconds] => runtime.block_on(clients::stall(url, secs(seconds)?)),
        ["over", addr, count] => {
            let report = runtime.block_on(clients::over(addr, number(count)?))?;
            println!("{report}");
            Ok(())
        }
        ["watchers", url, token_file, count, seconds] => runtime.block_on(watchers::run(
            url,
            token_file,
            number(count)?,
            secs(seconds)?,
        )),
        _ => Err(format!(
            "usage: see the doc comment of tests/src/bin/floodkit/main.rs (got {args:?})"
        )),
    }
}

fn number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("not a number: {s:?}"))
}

fn secs(s: &str) -> Result<Duration, String> {
    Ok(Duration::from_secs_f64(number(s)?))
}
