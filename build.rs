//! Compiles `proto/` into Rust with `protox` (a pure-Rust protobuf compiler) and
//! `tonic-prost-build`, so no `protoc` binary is needed on any machine. Also writes
//! the encoded file descriptor set that gRPC server reflection serves. Only the
//! `client` feature (and so `server`) needs any of it; the server's traits are
//! generated only with `server`.

#[cfg(not(feature = "client"))]
fn main() {}

#[cfg(feature = "client")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use std::path::PathBuf;

    let protos = ["proto/idmatch/v1/match.proto", "proto/idmatch/v1/optout.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = protox::compile(protos, ["proto"])?;
    std::fs::write(out_dir.join("idmatch_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure()
        .build_server(cfg!(feature = "server"))
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
