//! `cema-edge manifest init` as a user runs it: writes a manifest that loads, keeps an
//! existing one unless `--force`, and says what to give when the graph cannot tell.
#![allow(clippy::unwrap_used)] // a failing test should panic where it fails

use std::process::Command;

use cema_core::Manifest;
use cema_core::onnx::generate::ConvBnClassifier;

fn init(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cema-edge")).args(["manifest", "init"]).args(args).output().unwrap()
}

#[test]
fn init_writes_a_valid_manifest_beside_the_model_and_keeps_an_existing_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.onnx");
    let model = ConvBnClassifier::seeded(3, 3, 8, 1).model().unwrap();
    std::fs::write(&path, model.encode()).unwrap();
    let classes = dir.path().join("classes.txt");
    std::fs::write(&classes, "cat\n\ndog\nbird\n").unwrap();

    let output = init(&[path.to_str().unwrap(), "--classes", classes.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let manifest = Manifest::load(dir.path().join("net.toml")).unwrap();
    manifest.check_model(&model).unwrap();
    assert_eq!(manifest.classes.names, ["cat", "dog", "bird"]);
    assert!(manifest.provenance.contains_key("manifest"), "the command is recorded");

    // An existing manifest is kept.
    std::fs::write(&classes, "a\nb\nc\n").unwrap();
    let output = init(&[path.to_str().unwrap(), "--classes", classes.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--force"));
    assert_eq!(Manifest::load(dir.path().join("net.toml")).unwrap().classes.names, ["cat", "dog", "bird"]);
    let output = init(&[path.to_str().unwrap(), "--classes", classes.to_str().unwrap(), "--force"]);
    assert!(output.status.success());
    assert_eq!(Manifest::load(dir.path().join("net.toml")).unwrap().classes.names, ["a", "b", "c"]);

    // A wrong class count names both counts and writes nothing.
    let out = dir.path().join("other.toml");
    std::fs::write(&classes, "a\nb\n").unwrap();
    let output =
        init(&[path.to_str().unwrap(), "--classes", classes.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("2 names") && stderr.contains("3 logits"), "{stderr}");
    assert!(!out.exists());
}
