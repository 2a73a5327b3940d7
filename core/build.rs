//! Compiles the vendored `onnx-ml.proto` into prost types with protox, so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx/onnx-ml.proto");
    let descriptors = protox::compile(["onnx/onnx-ml.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
