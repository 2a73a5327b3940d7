//! `cema-model check`: passes an adaptable model, explains a model it cannot run.

use cema_core::onnx::generate::ConvBnClassifier;
use cema_tools::check::{MAX_RELATIVE_ERROR, check_model};

/// Writes `model` and the manifest of `spec` as `<name>.onnx` and `<name>.toml` in `dir`.
fn write(
    dir: &std::path::Path,
    name: &str,
    spec: &ConvBnClassifier,
    model: cema_core::OnnxModel,
) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.onnx"));
    std::fs::write(&path, model.encode()).expect("write model");
    std::fs::write(dir.join(format!("{name}.toml")), spec.manifest_toml()).expect("write manifest");
    path
}

#[test]
fn an_adaptable_model_passes_with_its_figures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = ConvBnClassifier::seeded(3, 10, 16, 5);
    let path = write(dir.path(), "classifier", &spec, spec.model().expect("model"));

    let report = check_model(&path, 3).expect("check");
    assert!(report.passed(), "{}", report.text);
    assert_eq!(report.bn_layers, 1);
    assert!(report.max_rel_err.expect("compared") <= MAX_RELATIVE_ERROR);
    assert!(report.text.contains("BatchNormalization×1") && report.text.contains("Conv×1"), "{}", report.text);
    assert!(report.text.contains("agrees with the model"), "{}", report.text);
    let line = report.summary_line();
    assert!(line.starts_with("supported=true bn_layers=1 max_rel_err="), "{line}");
}

#[test]
fn a_model_pooling_with_reduce_mean_passes_and_matches_onnx_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = ConvBnClassifier::seeded(3, 10, 16, 6);
    let path = write(dir.path(), "reduce_mean", &spec, spec.model_with_reduce_mean().expect("model"));

    let report = check_model(&path, 3).expect("check");
    assert!(report.passed(), "{}", report.text);
    assert!(report.text.contains("ReduceMean×1"), "{}", report.text);
    assert!(report.max_rel_err.expect("compared") <= MAX_RELATIVE_ERROR, "{}", report.text);
}

#[test]
fn a_model_with_unsupported_operators_is_explained() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/tests/data/onnx-backend/light_resnet50.onnx");
    let report = check_model(std::path::Path::new(path), 1).expect("check");
    assert!(!report.passed());
    assert!(!report.supported);
    assert!(report.text.contains("not adaptable"), "{}", report.text);
    assert!(report.summary_line().starts_with("supported=false"), "{}", report.summary_line());
}
