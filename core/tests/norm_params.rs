//! Normalisation-layer discovery and `NormParams`: extraction, validation, patching.

use cema_core::norm::{ONNX_BN_DEFAULT_EPSILON, ONNX_BN_DEFAULT_MOMENTUM};
use cema_core::onnx::generate::ConvBnClassifier;
use cema_core::onnx::{Attr, GraphBuilder, read_f32};
use cema_core::{NormDiscovery, NormParams, NormRefusal, NormTensor, OnnxModel, ParamsError};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/onnx-backend");

fn classifier() -> (ConvBnClassifier, OnnxModel) {
    let spec = ConvBnClassifier::seeded(2, 3, 4, 11);
    let model = spec.model().expect("build");
    (spec, model)
}

#[test]
fn pytorch_export_batchnorm_is_discovered_with_its_attributes() {
    let model = OnnxModel::load(format!("{DATA}/BatchNorm2d_eval/model.onnx")).expect("load");
    let found = NormDiscovery::of(&model);
    assert!(found.unsupported.is_empty(), "{:?}", found.unsupported);
    assert_eq!(found.layers.len(), 1);
    let layer = &found.layers[0];
    assert_eq!(layer.channels, 3);
    assert!(layer.epsilon > 0.0 && layer.epsilon < 1e-3, "eps {}", layer.epsilon);
    assert_eq!(found.parameter_count(), 12);
    let params = NormParams::source(&model).expect("source");
    assert_eq!(params.version, 0);
    assert_eq!(params.tensors.len(), 4);
    for name in layer.parameter_names() {
        let expected = read_f32(model.initializer(name).expect("init")).expect("f32");
        assert_eq!(params.tensors[name].values, expected, "{name}");
        assert_eq!(params.tensors[name].dims, vec![3]);
    }
}

#[test]
fn defaults_apply_when_attributes_are_absent() {
    let mut g = GraphBuilder::new("bn_defaults", 17);
    let x = g.input("x", &[None, Some(2), Some(1), Some(1)]);
    let names = ["s", "b", "m", "v"].map(|n| g.initializer(n, &[2], &[1.0, 1.0]));
    g.node("BatchNormalization", &[&x, &names[0], &names[1], &names[2], &names[3]], &["y"], &[]);
    g.output("y", &[None, Some(2), Some(1), Some(1)]);
    let model = g.build().expect("build");
    let layer = &NormDiscovery::of(&model).layers[0];
    assert_eq!(layer.epsilon, ONNX_BN_DEFAULT_EPSILON);
    assert_eq!(layer.momentum, ONNX_BN_DEFAULT_MOMENTUM);
    assert_eq!(layer.node, "BatchNormalization_0");
}

#[test]
fn unsupported_normalisation_is_reported_with_reasons() {
    let mut g = GraphBuilder::new("mixed", 17);
    let x = g.input("x", &[None, Some(2), Some(2), Some(2)]);
    let ones = [1.0f32, 1.0];
    // Adaptable.
    let ok = g.batch_norm(&x, "bn0", [&ones, &ones, &ones, &ones], 1e-5);
    // Training mode.
    let names = ["t.s", "t.b", "t.m", "t.v"].map(|n| g.initializer(n, &[2], &ones));
    let training = g.node(
        "BatchNormalization",
        &[&ok, &names[0], &names[1], &names[2], &names[3]],
        &["t.out"],
        &[("training_mode", Attr::Int(1))],
    );
    // Parameter computed at run time instead of stored.
    let computed = g.node("Identity", &["bn0.weight"], &["computed_scale"], &[]);
    let fed = g.node(
        "BatchNormalization",
        &[&training, &computed, "bn0.bias", "bn0.running_mean", "bn0.running_var"],
        &["fed.out"],
        &[],
    );
    // Another normalisation op.
    let ln_scale = g.initializer("ln.scale", &[2], &ones);
    let ln = g.node("LayerNormalization", &[&fed, &ln_scale], &["ln.out"], &[]);
    g.output(&ln, &[None, Some(2), Some(2), Some(2)]);
    let model = g.build().expect("build");

    let found = NormDiscovery::of(&model);
    assert_eq!(found.layers.len(), 1);
    assert_eq!(found.layers[0].scale, "bn0.weight");
    let reasons: Vec<(&str, String)> =
        found.unsupported.iter().map(|u| (u.op_type.as_str(), u.reason.to_string())).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].1.contains("training mode"), "{reasons:?}");
    assert!(reasons[1].1.contains("not an initializer"), "{reasons:?}");
    assert_eq!(reasons[2].0, "LayerNormalization");
}

#[test]
fn shared_parameters_are_not_adaptable() {
    let mut g = GraphBuilder::new("shared", 17);
    let x = g.input("x", &[None, Some(2), Some(1), Some(1)]);
    let ones = [1.0f32, 1.0];
    let first = g.batch_norm(&x, "bn", [&ones, &ones, &ones, &ones], 1e-5);
    g.node("BatchNormalization", &[&first, "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"], &["y"], &[]);
    g.output("y", &[None, Some(2), Some(1), Some(1)]);
    let found = NormDiscovery::of(&g.build().expect("build"));
    assert_eq!(found.layers.len(), 1);
    assert!(found.unsupported[0].reason.to_string().contains("shared"), "{:?}", found.unsupported);
}

#[test]
fn caffe2_resnet50_sorts_every_batchnorm_into_adaptable_or_reported() {
    let model = OnnxModel::load(format!("{DATA}/light_resnet50.onnx")).expect("load");
    let found = NormDiscovery::of(&model);
    let batch_norms = model.nodes().iter().filter(|n| n.op_type() == "BatchNormalization").count();
    assert!(batch_norms >= 50, "ResNet-50 has 53 BN layers, found {batch_norms}");
    assert_eq!(found.layers.len() + found.unsupported.len(), batch_norms);
    // This export stores some BN parameters as initializers and makes the rest with
    // ConstantOfShape nodes: the first kind is adaptable, the second is reported.
    assert!(!found.layers.is_empty() && !found.unsupported.is_empty());
    for layer in &found.layers {
        for name in layer.parameter_names() {
            let values = read_f32(model.initializer(name).expect(name)).expect("f32");
            assert_eq!(values.len(), layer.channels, "{name}");
        }
    }
    for u in &found.unsupported {
        assert!(matches!(u.reason, NormRefusal::NotInitializer(_)), "{u:?}");
    }
}

fn tensor(values: Vec<f32>) -> NormTensor {
    NormTensor { dims: vec![values.len()], values }
}

fn update(name: &str, t: NormTensor) -> NormParams {
    NormParams { version: 1, tensors: [(name.to_owned(), t)].into() }
}

#[test]
fn validation_names_the_problem() {
    let (_, model) = classifier();
    type Expectation = Box<dyn Fn(&ParamsError) -> bool>;
    let cases: Vec<(NormParams, Expectation)> = vec![
        (
            update("bn.nonexistent", tensor(vec![1.0; 3])),
            Box::new(|e| matches!(e, ParamsError::UnknownTensor { name } if name == "bn.nonexistent")),
        ),
        (
            update("conv.bias", tensor(vec![1.0; 3])),
            Box::new(|e| matches!(e, ParamsError::NotNormParameter { name } if name == "conv.bias")),
        ),
        (
            update("bn.weight", tensor(vec![1.0; 4])),
            Box::new(
                |e| matches!(e, ParamsError::ShapeMismatch { expected, actual, .. } if expected == &[3] && actual == &[4]),
            ),
        ),
        (
            update("bn.weight", NormTensor { dims: vec![3], values: vec![1.0; 2] }),
            Box::new(|e| matches!(e, ParamsError::LengthMismatch { len: 2, .. })),
        ),
        (
            update("bn.bias", tensor(vec![0.0, f32::NAN, 0.0])),
            Box::new(|e| matches!(e, ParamsError::NonFinite { name, index: 1, .. } if name == "bn.bias")),
        ),
        (
            update("bn.running_mean", tensor(vec![0.0, 0.0, f32::INFINITY])),
            Box::new(|e| matches!(e, ParamsError::NonFinite { index: 2, .. })),
        ),
        (
            update("bn.running_var", tensor(vec![1.0, -0.5, 1.0])),
            Box::new(|e| matches!(e, ParamsError::NegativeVariance { index: 1, .. })),
        ),
    ];
    for (params, expected) in cases {
        let err = params.validate(&model).expect_err("invalid update accepted");
        assert!(expected(&err), "unexpected error: {err}");
        let refused = params.apply(&model).expect_err("apply accepted an invalid update");
        assert_eq!(refused.to_string(), err.to_string(), "apply must refuse what validate refuses");
    }
}

#[test]
fn apply_writes_exactly_the_given_tensors() {
    let (spec, model) = classifier();
    let mut params = NormParams::source(&model).expect("source");
    assert_eq!(params.value_count(), 12);
    params.version = 5;
    params.tensors.get_mut("bn.weight").expect("weight").values = vec![2.0, 3.0, 4.0];
    params.tensors.remove("bn.bias"); // a subset leaves the rest as it is
    let patched = OnnxModel::decode(&params.apply(&model).expect("apply")).expect("decode");
    let read = |m: &OnnxModel, n: &str| read_f32(m.initializer(n).expect(n)).expect("f32");
    assert_eq!(read(&patched, "bn.weight"), vec![2.0, 3.0, 4.0]);
    assert_eq!(read(&patched, "bn.bias"), spec.bn[1]);
    assert_eq!(read(&patched, "bn.running_var"), spec.bn[3]);
    assert_eq!(read(&patched, "conv.weight"), spec.conv_weight);
    // The model's graph is untouched apart from the patched initializer.
    assert_eq!(patched.nodes(), model.nodes());
    assert_ne!(patched.fingerprint(), model.fingerprint());
    // Applying the source parameters reproduces the model's content.
    let source = NormParams::source(&model).expect("source");
    let same = OnnxModel::decode(&source.apply(&model).expect("apply")).expect("decode");
    assert_eq!(same, model);
}
