//! Decoding, canonical encoding and fingerprints of ONNX models, and the errors for bad files.

use cema_core::onnx::generate::ConvBnClassifier;
use cema_core::onnx::pb::tensor_proto::{DataLocation, DataType};
use cema_core::onnx::pb::{StringStringEntryProto, TensorProto};
use cema_core::onnx::{TensorError, read_f32};
use cema_core::{ModelError, ModelFingerprint, OnnxModel};
use prost::Message;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/onnx-backend");

fn read(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DATA}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn real_models() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("light_resnet50.onnx", read("light_resnet50.onnx")),
        ("BatchNorm2d_eval/model.onnx", read("BatchNorm2d_eval/model.onnx")),
    ]
}

#[test]
fn decode_encode_decode_is_lossless_on_real_models() {
    for (name, bytes) in real_models() {
        let first = OnnxModel::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let encoded = first.encode();
        let second = OnnxModel::decode(&encoded).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(first, second, "{name}: decode → encode → decode changed the model");
        assert_eq!(encoded, second.encode(), "{name}: canonical encoding is not a fixed point");
        // Nothing was dropped: the canonical encoding carries every byte of content.
        assert_eq!(encoded.len(), bytes.len(), "{name}: encoded size differs from the file");
    }
}

#[test]
fn fingerprint_is_stable_and_distinguishes_models() {
    let resnet = OnnxModel::decode(&read("light_resnet50.onnx")).expect("decode");
    let again = OnnxModel::decode(&resnet.encode()).expect("decode");
    assert_eq!(resnet.fingerprint(), again.fingerprint());
    let hex = resnet.fingerprint().to_hex();
    assert_eq!(hex.len(), 64);
    assert_eq!(ModelFingerprint::from_hex(&hex), Some(resnet.fingerprint()));
    assert_eq!(ModelFingerprint::from_hex("xyz"), None);

    let a = ConvBnClassifier::seeded(2, 3, 4, 1).model().expect("build");
    let b = ConvBnClassifier::seeded(2, 3, 4, 2).model().expect("build");
    assert_ne!(a.fingerprint(), b.fingerprint(), "different weights, same fingerprint");
    assert_ne!(a.fingerprint(), resnet.fingerprint());
}

#[test]
fn truncated_files_are_refused() {
    let bytes = read("light_resnet50.onnx");
    for cut in [1, 10, bytes.len() / 3, bytes.len() / 2, bytes.len() - 7] {
        match OnnxModel::decode(&bytes[..cut]) {
            Err(ModelError::Decode(_) | ModelError::Incomplete(_) | ModelError::NoOpset) => {}
            other => panic!("cut at {cut}: expected a decode error, got {other:?}"),
        }
    }
    assert!(matches!(OnnxModel::decode(&[]), Err(ModelError::Incomplete("no graph"))));
    assert!(matches!(OnnxModel::decode(b"not an onnx file at all"), Err(ModelError::Decode(_))));
}

fn with_initializer_changed(change: impl FnOnce(&mut TensorProto)) -> Vec<u8> {
    let model = ConvBnClassifier::seeded(2, 3, 4, 7).model().expect("build");
    let mut proto = model.into_proto();
    let graph = proto.graph.as_mut().expect("graph");
    let tensor = graph.initializer.iter_mut().find(|t| t.name() == "conv.weight").expect("conv.weight");
    change(tensor);
    proto.encode_to_vec()
}

#[test]
fn tensor_byte_length_must_agree_with_dims() {
    let bytes = with_initializer_changed(|t| {
        t.raw_data.as_mut().expect("raw").truncate(5);
    });
    match OnnxModel::decode(&bytes) {
        Err(ModelError::Tensor(TensorError::LengthMismatch { name, expected, actual, unit, .. })) => {
            assert_eq!(name, "conv.weight");
            assert_eq!((expected, actual, unit), (24, 5, "bytes"));
        }
        other => panic!("expected LengthMismatch, got {other:?}"),
    }
    let typed = with_initializer_changed(|t| {
        t.raw_data = None;
        t.float_data = vec![1.0; 5];
    });
    assert!(matches!(
        OnnxModel::decode(&typed),
        Err(ModelError::Tensor(TensorError::LengthMismatch { expected: 6, actual: 5, unit: "elements", .. }))
    ));
    let negative = with_initializer_changed(|t| t.dims[0] = -3);
    assert!(matches!(OnnxModel::decode(&negative), Err(ModelError::Tensor(TensorError::InvalidDims { .. }))));
}

#[test]
fn external_data_models_are_refused_by_name() {
    let bytes = with_initializer_changed(|t| {
        t.raw_data = None;
        t.data_location = Some(DataLocation::External as i32);
        t.external_data =
            vec![StringStringEntryProto { key: Some("location".into()), value: Some("weights.bin".into()) }];
    });
    let err = OnnxModel::decode(&bytes).expect_err("external data accepted");
    assert!(matches!(&err, ModelError::Tensor(TensorError::ExternalData { name }) if name == "conv.weight"));
    assert!(err.to_string().contains("external file"), "{err}");
}

#[test]
fn duplicate_initializers_are_refused() {
    let model = ConvBnClassifier::seeded(2, 3, 4, 7).model().expect("build");
    let mut proto = model.into_proto();
    let graph = proto.graph.as_mut().expect("graph");
    let copy = graph.initializer[0].clone();
    graph.initializer.push(copy);
    assert!(matches!(OnnxModel::from_proto(proto), Err(ModelError::DuplicateInitializer(_))));
}

#[test]
fn reference_tensors_of_real_files_read_as_f32() {
    let input = TensorProto::decode(read("BatchNorm2d_eval/input_0.pb").as_slice()).expect("decode");
    assert_eq!(input.data_type(), DataType::Float as i32);
    let values = read_f32(&input).expect("f32");
    assert_eq!(values.len() as i64, input.dims.iter().product::<i64>());
    let not_f32 = TensorProto {
        name: Some("shape".into()),
        dims: vec![2],
        data_type: Some(DataType::Int64 as i32),
        int64_data: vec![1, 2],
        ..TensorProto::default()
    };
    assert!(matches!(read_f32(&not_f32), Err(TensorError::NotF32 { .. })));
}
