//! Compiles the cema.v1 contract with protox (pure Rust, no protoc) and tonic-prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["cema/v1/tensors.proto", "cema/v1/service.proto", "cema/v1/operator.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
