//! Compiles proto/ with protox (pure Rust, no system protoc) and keeps the descriptor set for
//! server reflection. The services are generated only with the `grpc` feature.
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/ferrolb/v1/ipam.proto",
        "proto/ferrolb/v1/cluster.proto",
        "proto/ferrolb/v1/identity.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("ferrolb_descriptor.bin"), fds.encode_to_vec())?;
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        .compile_fds(fds)?;
    Ok(())
}
