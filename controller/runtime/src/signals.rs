//! Signals, the two ways weft's binaries wait for them.
//!
//! - [`shutdown_signal`]: SIGTERM or SIGINT as a future, for the async binaries
//!   (weft-proxy drains, weft-controller stops serving).
//! - [`install`] / [`stop_requested`]: Ctrl-C, SIGTERM and SIGHUP as a flag that
//!   `weftctl up`'s blocking loop polls: the teardown then runs on the main thread,
//!   in order, instead of in a handler.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// A stop-flag handler could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("install a {signal} handler: {errno}")]
pub struct InstallError {
    pub signal: Signal,
    pub errno: nix::errno::Errno,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

/// Installs the stop-flag handlers for SIGINT, SIGTERM and SIGHUP.
pub fn install() -> Result<(), InstallError> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &action) }.map_err(|errno| InstallError { signal: sig, errno })?;
    }
    Ok(())
}

/// True once one of the signals arrived.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Resolves on SIGTERM or SIGINT. Needs a Tokio runtime with signals enabled.
/// When the handlers cannot be installed it logs so and never resolves: the
/// process then stops only by kill.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = int.recv() => tracing::info!("SIGINT"),
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; shutdown only by kill");
            std::future::pending::<()>().await
        }
    }
}
