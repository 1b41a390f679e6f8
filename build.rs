//! Compiles `proto/` into Rust with `protox` (a pure-Rust protobuf compiler) and
//! `tonic-prost-build`, so no `protoc` binary is needed on any machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/idmatch/v1/match.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(descriptors)?;
    Ok(())
}
