//! The properties the fuzz targets check (`controller/fuzz`), in one place: each
//! `fuzz_targets/*.rs` calls one function here, and so does the corpus replay
//! (`tests/fuzz_corpus.rs`) on the stable toolchain, so the two cannot drift. A
//! property that does not hold panics. Pure and in-process: no socket, no file.
//!
//! Not an API: hidden from the docs, kept small.

use base64::Engine as _;
use serde_json::Value;

use crate::http::{parse_endpoint, PutBody};
use crate::inject::{InjectConfig, Via};
use crate::meshfile;
use crate::model::Registration;
use crate::webhook;

/// The mesh-file parser and validator on `data` as a file's text. Checks: no
/// panic; an error names a line of the file and says something; a mesh accepted
/// breaks no rule. Time and memory are bounded by the fuzzer's limits (and the
/// corpus holds an alias bomb and deep nesting).
pub fn meshfile(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match meshfile::parse("fuzz.yaml", text) {
        Ok(mesh) => {
            let broken = mesh.validate();
            assert!(broken.is_empty(), "accepted with {} errors", broken.len());
        }
        Err(e) => {
            assert!(!e.message.is_empty(), "an error without a message");
            // Lines as an editor counts them: `\r\n`, `\r` and `\n` each end one
            // (the parser's own count, which also ends lines at U+0085, U+2028 and
            // U+2029, is translated by the mesh-file module).
            let lines = text.replace("\r\n", "\n").split(['\r', '\n']).count();
            if let Some(line) = e.line {
                assert!(
                    (1..=lines + 1).contains(&line),
                    "line {line} of a {lines}-line file: {}",
                    e.message
                );
            }
        }
    }
}

/// A registration (`PUT /v1/services/{service}/endpoints/{address}`): `data`'s
/// first line is `{service}/{address}` as in the path (percent-encoded), the rest
/// is the JSON body. Built as `http::put_endpoint` builds it. Checks: no panic;
/// a registration accepted is stored in the registry's file form and read back
/// equal and valid (so a restart reopens it rather than calling the file corrupt).
pub fn registration(data: &[u8]) {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (path, body) = data.split_at(split);
    let body = body.get(1..).unwrap_or(&[]);
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let Some((service, address)) = path.split_once('/') else {
        return;
    };
    let Ok((service, address)) = parse_endpoint(service, address) else {
        return;
    };
    // As put_endpoint: a blank body is an empty one.
    let body: PutBody = if body.iter().all(u8::is_ascii_whitespace) {
        PutBody::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(_) => return,
        }
    };
    let reg = Registration {
        service,
        address,
        port: body.port,
        weight: body.weight.unwrap_or(std::num::NonZeroU32::MIN),
        labels: body.labels,
    };
    if reg.validate().is_err() {
        return;
    }
    let stored = serde_json::to_vec(&reg).expect("a registration serializes");
    let back: Registration = serde_json::from_slice(&stored)
        .unwrap_or_else(|e| panic!("stored {reg:?} does not read back: {e}"));
    assert_eq!(back, reg, "a registration changes on the round trip");
    assert_eq!(back.validate(), Ok(()), "a stored registration is invalid");
}

/// The part of a review [`admission_review`] compares with the answer.
#[derive(serde::Deserialize)]
struct Sent {
    request: SentRequest,
}

#[derive(serde::Deserialize)]
struct SentRequest {
    uid: String,
}

/// The admission webhook on `data` as a review body, through both paths
/// (`/inject`, `/inject/namespace`). Checks: no panic; an answer serializes to
/// JSON, is an `admission.k8s.io/v1` AdmissionReview whose response echoes the
/// request's `uid`; a patch is base64 of a JSON Patch (an array of operations with
/// an `op` and a JSON-pointer `path`); a refusal says why.
pub fn admission_review(data: &[u8]) {
    let config = InjectConfig::default();
    for via in [Via::Pod, Via::Namespace] {
        let Ok(answer) = webhook::review(data, via, &config) else {
            continue;
        };
        let bytes = serde_json::to_vec(&answer).expect("the answer serializes");
        let answer: Value = serde_json::from_slice(&bytes).expect("the answer is JSON");
        // The uid read as serde reads it: a field the webhook ignores is skipped
        // unchecked (it may even hold bytes that are not UTF-8), so the request
        // is not necessarily a JSON value.
        let sent: Sent = serde_json::from_slice(data).expect("an answered request has a uid");
        let uid = sent.request.uid.as_str();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        let response = &answer["response"];
        assert_eq!(response["uid"].as_str(), Some(uid), "uid not echoed");
        let allowed = response["allowed"].as_bool().expect("allowed is a bool");
        if !allowed {
            assert_eq!(response["status"]["code"], 400);
            assert!(response["status"]["message"].is_string());
        }
        if let Some(patch) = response.get("patch") {
            assert!(allowed, "a patch on a refusal");
            assert_eq!(response["patchType"], "JSONPatch");
            let raw = base64::engine::general_purpose::STANDARD
                .decode(patch.as_str().expect("the patch is a string"))
                .expect("the patch is base64");
            let ops: Vec<Value> = serde_json::from_slice(&raw).expect("the patch is JSON");
            for op in &ops {
                let kind = op["op"].as_str().expect("an op names its kind");
                assert!(
                    ["add", "remove", "replace", "move", "copy", "test"].contains(&kind),
                    "op {kind}"
                );
                let path = op["path"].as_str().expect("an op has a path");
                assert!(path.is_empty() || path.starts_with('/'), "path {path:?}");
            }
        }
    }
}
