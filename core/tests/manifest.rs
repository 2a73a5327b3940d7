//! Model manifests: parsing, validation that reports every problem, and the check against a model.

use cema_core::manifest::{Layout, PixelType};
use cema_core::onnx::generate::ConvBnClassifier;
use cema_core::{Manifest, ManifestError};

const FASHION: &str = r#"
[input]
name = "input"
shape = [1, 28, 28]
layout = "nchw"
pixels = "u8"

[output]
name = "logits"

[preprocess]
scale = 0.00392156862745098
mean = [0.2860]
std = [0.3530]

[classes]
names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

[provenance]
command = "cema-cloud pretrain --model student"
seed = 7
"#;

fn problems(text: &str) -> Vec<String> {
    match Manifest::parse(text) {
        Err(ManifestError::Invalid(problems)) => problems,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn a_complete_manifest_parses() {
    let m = Manifest::parse(FASHION).expect("valid");
    assert_eq!(m.input.layout, Layout::Nchw);
    assert_eq!(m.input.pixels, PixelType::U8);
    assert_eq!((m.channels(), m.sample_elements(), m.num_classes()), (1, 784, 10));
    assert_eq!(m.spatial(), (28, 28));
    assert_eq!(m.provenance["seed"].as_integer(), Some(7));
}

#[test]
fn preprocessing_follows_the_formula_per_channel() {
    let text = r#"
[input]
name = "x"
shape = [2, 1, 2]
layout = "nchw"
pixels = "u8"
[output]
name = "y"
[preprocess]
scale = 0.5
mean = [1.0, 2.0]
std = [2.0, 4.0]
[classes]
names = ["a", "b"]
"#;
    let m = Manifest::parse(text).expect("valid");
    let mut out = Vec::new();
    m.preprocess_u8(&[10, 20, 30, 40], &mut out);
    // channel 0: (10·0.5 − 1)/2, (20·0.5 − 1)/2; channel 1: (30·0.5 − 2)/4, (40·0.5 − 2)/4
    assert_eq!(out, vec![2.0, 4.5, 3.25, 4.5]);

    let nhwc = text.replace("shape = [2, 1, 2]", "shape = [1, 2, 2]").replace("\"nchw\"", "\"nhwc\"");
    let m = Manifest::parse(&nhwc).expect("valid");
    out.clear();
    m.preprocess_u8(&[10, 30, 20, 40], &mut out);
    assert_eq!(out, vec![2.0, 3.25, 4.5, 4.5]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let bad = FASHION
        .replace("shape = [1, 28, 28]", "shape = [1, 0, 28]")
        .replace("std = [0.3530]", "std = [0.0]")
        .replace("\"Trouser\"", "\"Bag\"")
        .replace("scale = 0.00392156862745098", "scale = -1.0");
    let found = problems(&bad);
    assert_eq!(found.len(), 4, "{found:#?}");
    assert!(found.iter().any(|p| p.contains("preprocess.scale")));
    assert!(found.iter().any(|p| p.contains("std values must be positive")));
    assert!(found.iter().any(|p| p.contains("`Bag` twice")));
    assert!(found.iter().any(|p| p.contains("input.shape has a zero axis")));
    let rendered = ManifestError::Invalid(found).to_string();
    assert!(rendered.starts_with("manifest is invalid:\n  - "), "{rendered}");
}

#[test]
fn channel_counts_and_crops_must_agree() {
    let bad = FASHION
        .replace("shape = [1, 28, 28]", "shape = [3, 28, 28]")
        .replace("mean = [0.2860]", "mean = [0.1, 0.2]")
        .replace("[classes]", "center_crop = 24\nresize_shorter = 20\n\n[classes]");
    let found = problems(&bad);
    assert!(found.iter().any(|p| p.contains("preprocess.mean has 2 values")), "{found:#?}");
    assert!(found.iter().any(|p| p.contains("center_crop 24 exceeds resize_shorter 20")), "{found:#?}");
    assert!(found.iter().any(|p| p.contains("does not give the input's 28×28")), "{found:#?}");
}

#[test]
fn unknown_and_missing_keys_are_parse_errors() {
    let typo = FASHION.replace("layout = \"nchw\"", "layuot = \"nchw\"");
    let err = Manifest::parse(&typo).expect_err("typo accepted");
    assert!(matches!(err, ManifestError::Parse(_)));
    assert!(err.to_string().contains("layuot"), "{err}");
    let bad_enum = FASHION.replace("pixels = \"u8\"", "pixels = \"u16\"");
    assert!(matches!(Manifest::parse(&bad_enum), Err(ManifestError::Parse(_))));
}

#[test]
fn the_manifest_is_checked_against_its_model() {
    let spec = ConvBnClassifier::seeded(2, 3, 4, 3);
    let model = spec.model().expect("build");
    let manifest = Manifest::parse(&spec.manifest_toml()).expect("valid");
    manifest.check_model(&model).expect("matching manifest");

    let wrong =
        spec.manifest_toml().replace("name = \"input\"", "name = \"image\"").replace("\"c2\"", "\"c2\", \"c3\"");
    let Err(ManifestError::Invalid(found)) = Manifest::parse(&wrong).expect("parses").check_model(&model) else {
        panic!("mismatch accepted");
    };
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].contains("`image` is not a graph input") && found[0].contains("input"));
    assert!(found[1].contains("lists 4 classes but the model outputs 3 logits"));

    let shape = spec.manifest_toml().replace("shape = [2, 4, 4]", "shape = [2, 5, 5]");
    let Err(ManifestError::Invalid(found)) = Manifest::parse(&shape).expect("parses").check_model(&model) else {
        panic!("shape mismatch accepted");
    };
    assert!(found[0].contains("disagrees with the model's input dims [?, 2, 4, 4]"), "{found:#?}");
}
