//! The replica's record of what it received: the `x-req-id` of every request,
//! appended to a file as the request arrives (before its body is read), one line
//! each. The file is opened `O_APPEND` and each line is one `write(2)`, so lines
//! from concurrent requests (and from the replica's other app, `httpkit.py serve`,
//! which logs to the same file) never interleave, and what was written survives
//! the process being killed with SIGKILL.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct ReceivedLog(Arc<File>);

impl ReceivedLog {
    pub fn open(path: &str) -> Result<ReceivedLog, String> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| format!("open {path}: {e}"))?;
        Ok(ReceivedLog(Arc::new(file)))
    }

    /// Records the id of a request that has just arrived (nothing without an id).
    pub fn record(&self, id: Option<&[u8]>) {
        let Some(id) = id else { return };
        let mut line = Vec::with_capacity(id.len() + 1);
        line.extend_from_slice(id);
        line.push(b'\n');
        // A lost line would only make a received request look never received,
        // which the test reports as a failure: nothing to do here but say so.
        if let Err(e) = (&*self.0).write_all(&line) {
            eprintln!("h2kit: logging a received id: {e}");
        }
    }
}
