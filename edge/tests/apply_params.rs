//! Parameter updates reach a real ONNX Runtime session at full graph optimisation.
//!
//! ONNX Runtime folds BatchNormalization into the preceding convolution from the file's
//! values, so an update that only overrode initializers at session level would be silently
//! ignored. These tests prove the served predictions follow the update exactly.

use cema_core::onnx::generate::{ConvBnClassifier, SplitMix64};
use cema_core::onnx::pb::TensorProto;
use cema_core::onnx::read_f32;
use cema_core::{Manifest, NormParams, NormTensor, OnnxModel, ParamsError};
use cema_edge::{OrtLibrary, Runtime, RuntimeError};
use prost::Message;

const BACKEND_DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/tests/data/onnx-backend");
const TOLERANCE: f64 = 1e-5;

fn library() -> OrtLibrary {
    OrtLibrary::get(None).expect("ONNX Runtime (run scripts/setup.sh)")
}

fn runtime(spec: &ConvBnClassifier) -> Runtime {
    let manifest = Manifest::parse(&spec.manifest_toml()).expect("manifest");
    Runtime::new(library(), spec.model().expect("model"), manifest, 1).expect("runtime")
}

fn assert_close(actual: &[f32], expected: &[f64], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let err = (*a as f64 - e).abs() / e.abs().max(1.0);
        assert!(err <= TOLERANCE, "{what}[{i}]: ORT {a} vs expected {e} (rel err {err:e})");
    }
}

fn new_bn(classes: usize) -> [Vec<f32>; 4] {
    let mut rng = SplitMix64::new(404);
    [rng.vec(classes, -2.0, 2.0), rng.vec(classes, 0.5, 1.5), rng.vec(classes, -1.0, 1.0), rng.vec(classes, 0.1, 3.0)]
}

fn params_from(bn: &[Vec<f32>; 4], version: u64) -> NormParams {
    let names = ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"];
    NormParams {
        version,
        tensors: names
            .iter()
            .zip(bn)
            .map(|(n, v)| (n.to_string(), NormTensor { dims: vec![v.len()], values: v.clone() }))
            .collect(),
    }
}

#[test]
fn patched_parameters_change_predictions_exactly_as_computed_by_hand() {
    let spec = ConvBnClassifier::seeded(3, 4, 5, 21);
    let mut rt = runtime(&spec);
    let batch = 3;
    let input = SplitMix64::new(8).vec(batch * 3 * 25, -1.0, 1.0);

    let before = rt.predict(&input, batch).expect("predict");
    assert_eq!(before.params_version, 0);
    assert_close(&before.logits, &spec.reference_logits(&input, batch, &spec.bn), "source logits");

    let bn = new_bn(4);
    let prepared = rt.prepare(&params_from(&bn, 3)).expect("valid update");
    // Preparing does not touch the serving session.
    assert_eq!(rt.predict(&input, batch).expect("predict").logits, before.logits);
    rt.swap(prepared);

    let after = rt.predict(&input, batch).expect("predict");
    assert_eq!(after.params_version, 3);
    let expected = spec.reference_logits(&input, batch, &bn);
    assert_close(&after.logits, &expected, "patched logits");
    // The update must make a visible difference, or this test proves nothing.
    let moved = after.logits.iter().zip(&before.logits).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(moved > 0.1, "update moved logits by only {moved}");
    // Entropies and probabilities come from the served logits.
    for i in 0..batch {
        let row = &after.logits[i * 4..(i + 1) * 4];
        assert!((after.entropy[i] - cema_core::math::entropy_of_logits(row)).abs() < 1e-6);
        assert!((after.probs_of(i).iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    // Reset returns to the source parameters.
    let source = rt.prepare_source().expect("source");
    rt.swap(source);
    let reset = rt.predict(&input, batch).expect("predict");
    assert_eq!((reset.params_version, &reset.logits), (0, &before.logits));
}

#[test]
fn invalid_updates_are_refused_and_predictions_stay_unchanged() {
    let spec = ConvBnClassifier::seeded(2, 3, 4, 5);
    let mut rt = runtime(&spec);
    let input = SplitMix64::new(1).vec(2 * 2 * 16, -1.0, 1.0);
    let before = rt.predict(&input, 2).expect("predict");

    let mut nan = params_from(&new_bn(3), 1);
    nan.tensors.get_mut("bn.bias").expect("bias").values[0] = f32::NAN;
    let mut unknown = params_from(&new_bn(3), 1);
    unknown.tensors.insert("bn.gamma".into(), NormTensor { dims: vec![3], values: vec![1.0; 3] });
    let mut shape = params_from(&new_bn(3), 1);
    shape.tensors.insert("bn.weight".into(), NormTensor { dims: vec![4], values: vec![1.0; 4] });

    for (update, what) in [(nan, "NaN"), (unknown, "unknown name"), (shape, "wrong shape")] {
        match rt.prepare(&update) {
            Err(RuntimeError::Params(
                ParamsError::NonFinite { .. } | ParamsError::UnknownTensor { .. } | ParamsError::ShapeMismatch { .. },
            )) => {}
            other => panic!("{what}: expected a parameter error, got {other:?}"),
        }
        let again = rt.predict(&input, 2).expect("predict");
        assert_eq!((again.params_version, &again.logits), (0, &before.logits), "{what} changed predictions");
    }
}

#[test]
fn batches_of_the_wrong_size_are_refused() {
    let spec = ConvBnClassifier::seeded(2, 3, 4, 5);
    let mut rt = runtime(&spec);
    assert!(matches!(rt.predict(&[0.0; 31], 1), Err(RuntimeError::InputSize { actual: 31, expected: 32, .. })));
    assert!(matches!(rt.predict(&[], 0), Err(RuntimeError::InputSize { .. })));
}

fn tensor_file(name: &str) -> (Vec<i64>, Vec<f32>) {
    let bytes = std::fs::read(format!("{BACKEND_DATA}/{name}")).expect(name);
    let tensor = TensorProto::decode(bytes.as_slice()).expect("tensor");
    (tensor.dims.clone(), read_f32(&tensor).expect("f32"))
}

/// The file is a 2017 export at opset 6, which current ONNX Runtime no longer implements.
/// BatchNormalization-7 differs from -6 only by dropping `is_test` (inference is the only
/// mode), so lifting the opset keeps the semantics of this eval-mode export.
fn opset7(model: OnnxModel) -> OnnxModel {
    let mut proto = model.into_proto();
    proto.opset_import[0].version = Some(7);
    for node in &mut proto.graph.as_mut().expect("graph").node {
        node.attribute.retain(|a| a.name() != "is_test");
    }
    OnnxModel::from_proto(proto).expect("valid")
}

/// PyTorch's own BatchNorm2d export: ORT reproduces PyTorch's output, and after a patch it
/// follows the formula with the new parameters.
#[test]
fn pytorch_batchnorm_export_follows_patched_parameters() {
    let model = opset7(OnnxModel::load(format!("{BACKEND_DATA}/BatchNorm2d_eval/model.onnx")).expect("model"));
    let (dims, input) = tensor_file("BatchNorm2d_eval/input_0.pb");
    let (_, pytorch_output) = tensor_file("BatchNorm2d_eval/output_0.pb");
    let input_name = model.input_names()[0].to_owned();
    let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
    let run = |bytes: &[u8]| library().run_once(bytes, &input_name, &dims, &input).expect("run");

    let expected: Vec<f64> = pytorch_output.iter().map(|&v| v as f64).collect();
    assert_close(&run(&model.encode()), &expected, "source vs PyTorch");

    let source = NormParams::source(&model).expect("source");
    let layer = &cema_core::NormDiscovery::of(&model).layers[0];
    let channels = layer.channels;
    let bn = new_bn(channels);
    let mut update = source.clone();
    for (name, values) in layer.parameter_names().iter().zip(&bn) {
        update.tensors.insert(name.to_string(), NormTensor { dims: vec![channels], values: values.clone() });
    }
    let plane = dims[2] * dims[3];
    let expected: Vec<f64> = input
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let c = (i / plane) % channels;
            let normalised = (x as f64 - bn[2][c] as f64) / (bn[3][c] as f64 + layer.epsilon as f64).sqrt();
            bn[0][c] as f64 * normalised + bn[1][c] as f64
        })
        .collect();
    assert_close(&run(&update.apply(&model).expect("apply")), &expected, "patched vs formula");
}
