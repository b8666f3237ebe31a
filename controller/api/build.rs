//! Generates the discovery and identity APIs' Rust code from `proto/*.proto` without a
//! system `protoc`: `protox` (a pure-Rust protobuf compiler) parses the file into a
//! `FileDescriptorSet`, which `tonic-prost-build` turns into messages, client and
//! server.

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
    Ok(())
}
