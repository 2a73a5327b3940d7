//! Manifests drafted from ONNX graphs: what the graph tells is read from it, what it cannot
//! tell must be given, and every draft validates against its model.
#![allow(clippy::unwrap_used)] // a failing test should panic where it fails

use cema_core::Manifest;
use cema_core::draft::{DraftError, DraftOptions, Preprocessing, draft};
use cema_core::manifest::{Layout, PixelType};
use cema_core::onnx::generate::ConvBnClassifier;

#[test]
fn a_small_model_gets_its_input_output_classes_and_unit_preprocessing() {
    let model = ConvBnClassifier::seeded(3, 5, 8, 1).model().unwrap();
    let text = draft(&model, &DraftOptions::default()).unwrap();
    let manifest = Manifest::parse(&text).unwrap();
    manifest.check_model(&model).unwrap();
    assert_eq!(manifest.input.name, "input");
    assert_eq!(manifest.input.shape, [3, 8, 8]);
    assert_eq!(manifest.input.layout, Layout::Nchw);
    assert_eq!(manifest.input.pixels, PixelType::U8);
    assert_eq!(manifest.output.name, "logits");
    assert_eq!(manifest.classes.names, ["class_0", "class_1", "class_2", "class_3", "class_4"]);
    assert!((manifest.preprocess.scale - 1.0 / 255.0).abs() < 1e-9);
    assert_eq!((manifest.preprocess.mean.as_slice(), manifest.preprocess.std.as_slice()), (&[0.0][..], &[1.0][..]));
    assert_eq!(manifest.preprocess.center_crop, None);
}

#[test]
fn an_image_sized_rgb_model_gets_imagenet_preprocessing_with_resize_and_crop() {
    let model = ConvBnClassifier::seeded(3, 4, 224, 2).model().unwrap();
    let text = draft(&model, &DraftOptions::default()).unwrap();
    let manifest = Manifest::parse(&text).unwrap();
    assert_eq!(manifest.preprocess.mean, [0.485, 0.456, 0.406]);
    assert_eq!(manifest.preprocess.std, [0.229, 0.224, 0.225]);
    assert_eq!((manifest.preprocess.resize_shorter, manifest.preprocess.center_crop), (Some(256), Some(224)));
    let raw =
        draft(&model, &DraftOptions { preprocessing: Some(Preprocessing::Identity), ..Default::default() }).unwrap();
    assert_eq!(Manifest::parse(&raw).unwrap().preprocess.scale, 1.0);
}

#[test]
fn class_names_are_kept_exactly_and_must_match_the_logits() {
    let model = ConvBnClassifier::seeded(1, 3, 8, 3).model().unwrap();
    let names: Vec<String> = ["tench", "say \"cheese\"", "Æsop's fable\\path"].map(String::from).to_vec();
    let options = DraftOptions { class_names: Some(names.clone()), ..Default::default() };
    let manifest = Manifest::parse(&draft(&model, &options).unwrap()).unwrap();
    assert_eq!(manifest.classes.names, names);
    let two = DraftOptions { class_names: Some(names[..2].to_vec()), ..Default::default() };
    let error = draft(&model, &two).unwrap_err();
    assert!(matches!(error, DraftError::ClassCount { names: 2, logits: 3, .. }), "{error}");
}

#[test]
fn what_the_graph_cannot_tell_must_be_given_and_contradictions_are_refused() {
    // [3, 3, 3]: channels first or last?
    let model = ConvBnClassifier::seeded(3, 4, 3, 4).model().unwrap();
    let error = draft(&model, &DraftOptions::default()).unwrap_err();
    assert!(matches!(error, DraftError::Layout(_)), "{error}");
    assert!(error.to_string().contains("--layout"), "{error}");
    let given = DraftOptions { layout: Some(Layout::Nchw), ..Default::default() };
    Manifest::parse(&draft(&model, &given).unwrap()).unwrap().check_model(&model).unwrap();
    // A shape that disagrees with the graph's fixed dims does not validate.
    let model = ConvBnClassifier::seeded(3, 4, 8, 5).model().unwrap();
    let wrong = DraftOptions { shape: Some(vec![3, 9, 9]), ..Default::default() };
    let error = draft(&model, &wrong).unwrap_err();
    assert!(matches!(error, DraftError::Invalid(_)), "{error}");
}
