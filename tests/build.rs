//! Generates the fault suites' gRPC service (`proto/faults.proto`, used by the
//! `h2kit` tool binary) without a system `protoc`, as `weft-api` does: `protox`
//! parses the file, `tonic-prost-build` writes the messages, client and server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/faults.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
