//! Generates the discovery and identity APIs' Rust code from `proto/*.proto` without a
//! system `protoc`: `protox` (a pure-Rust protobuf compiler) parses the file into a
//! `FileDescriptorSet`, which `tonic-prost-build` turns into messages, client and
//! server.
//!
//! The discovery service is generated twice: once whole (messages, client, server),
//! and once more as a server alone whose streams send [`EncodedMeshUpdate`]s, the
//! controller's `MeshUpdate`s encoded once and shared by every stream (see
//! `src/encoded.rs`). Same proto, same method paths: the wire does not change.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/discovery.proto", "proto/identity.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    encoded_discovery_server()
}

/// The discovery server whose response messages are pre-encoded: every message type
/// is the one generated above (`crate::discovery`), except `MeshUpdate`, which
/// becomes `crate::encoded::EncodedMeshUpdate`. Written to `$OUT_DIR/encoded/`.
fn encoded_discovery_server() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("encoded");
    std::fs::create_dir_all(&out)?;
    let fds = protox::compile(["proto/discovery.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .out_dir(out)
        .extern_path(".weft.discovery.v1", "crate::discovery")
        .extern_path(
            ".weft.discovery.v1.MeshUpdate",
            "crate::encoded::EncodedMeshUpdate",
        )
        .compile_fds(fds)?;
    Ok(())
}
