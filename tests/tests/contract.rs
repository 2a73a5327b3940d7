//! The cema.v1 contract end to end through protobuf bytes: what a sender builds is what a
//! receiver validates and applies, and upload batches respect the message-size policy.

use cema_core::codec::encode_u8;
use cema_core::onnx::generate::ConvBnClassifier;
use cema_core::{Compression, DecodeLimits, Manifest, NormParams, OnnxModel, SampleValues};
use cema_proto::{
    MAX_MESSAGE_BYTES, UPLOAD_BATCH_TARGET_BYTES, norm_params_from_wire, norm_params_to_wire, sample_from_wire,
    sample_to_wire, split_upload, v1,
};
use prost::Message;

fn through_the_wire<M: Message + Default>(message: &M) -> M {
    M::decode(message.encode_to_vec().as_slice()).expect("decode")
}

#[test]
fn norm_params_survive_the_wire_and_apply_identically() {
    let spec = ConvBnClassifier::seeded(3, 4, 5, 9);
    let model = spec.model().expect("model");
    let mut params = NormParams::source(&model).expect("source");
    params.version = 42;
    params.tensors.get_mut("bn.weight").expect("weight").values = vec![0.25, -1.5, 3.0, 1e-7];

    let received = norm_params_from_wire(through_the_wire(&norm_params_to_wire(&params, "device-a"))).expect("wire");
    assert_eq!(received, params);
    received.validate(&model).expect("valid at the receiver");
    assert_eq!(received.apply(&model).expect("apply"), params.apply(&model).expect("apply"));
    let wire = norm_params_to_wire(&params, "device-a");
    assert_eq!(wire.scope, "device-a");
    assert_eq!(wire.tensors.iter().map(|t| t.data.len()).sum::<usize>(), 16 * 4);
}

#[test]
fn malformed_wire_params_are_refused() {
    let mut bad = v1::NormParams {
        version: 1,
        scope: "s".into(),
        tensors: vec![v1::NormTensor { name: "bn.weight".into(), dims: vec![3], data: vec![0; 11] }],
    };
    assert!(matches!(
        norm_params_from_wire(bad.clone()),
        Err(cema_proto::ConvertError::TensorLength { expected: 12, actual: 11, .. })
    ));
    bad.tensors[0].data = vec![0; 12];
    bad.tensors.push(bad.tensors[0].clone());
    assert!(matches!(norm_params_from_wire(bad), Err(cema_proto::ConvertError::DuplicateTensor(_))));
    let overflow = v1::NormParams {
        tensors: vec![v1::NormTensor { name: "x".into(), dims: vec![u64::MAX, 4], data: vec![] }],
        ..Default::default()
    };
    assert!(norm_params_from_wire(overflow).is_err());
}

#[test]
fn samples_survive_the_wire_and_bad_enums_are_refused() {
    let pixels: Vec<u8> = (0..784).map(|i| (i % 251) as u8).collect();
    let sample = encode_u8(&[1, 28, 28], &pixels, Compression::Zstd).expect("encode");
    let received = sample_from_wire(through_the_wire(&sample_to_wire(&sample))).expect("wire");
    assert_eq!(received, sample);
    assert_eq!(received.decode(DecodeLimits::for_dims(&[1, 28, 28])).expect("decode"), SampleValues::U8(pixels));

    let unspecified = v1::EncodedTensor { encoding: 0, ..sample_to_wire(&sample) };
    assert!(matches!(
        sample_from_wire(unspecified),
        Err(cema_proto::ConvertError::BadEnum { field: "encoding", value: 0 })
    ));
    let unknown = v1::EncodedTensor { compression: 9, ..sample_to_wire(&sample) };
    assert!(matches!(sample_from_wire(unknown), Err(cema_proto::ConvertError::BadEnum { field: "compression", .. })));
}

#[test]
fn an_imagenet_batch_is_split_under_the_message_limit() {
    // 64 ImageNet-size images as u8 are ~9.6 MB: more than the 8 MiB a request aims for.
    let image = vec![127u8; 3 * 224 * 224];
    let samples: Vec<v1::Sample> = (1..=64)
        .map(|seq| v1::Sample {
            seq,
            input: Some(sample_to_wire(&encode_u8(&[3, 224, 224], &image, Compression::None).expect("encode"))),
            entropy: 1.5,
            params_version: 3,
            predicted_class: 7,
        })
        .collect();
    let total: usize = samples.iter().map(Message::encoded_len).sum();
    assert!(total > UPLOAD_BATCH_TARGET_BYTES);

    let requests = split_upload("cam-1", samples, UPLOAD_BATCH_TARGET_BYTES);
    assert_eq!(requests.len(), 2);
    let seqs: Vec<u64> = requests.iter().flat_map(|r| r.samples.iter().map(|s| s.seq)).collect();
    assert_eq!(seqs, (1..=64).collect::<Vec<_>>(), "order and completeness");
    for request in &requests {
        assert!(request.encoded_len() <= UPLOAD_BATCH_TARGET_BYTES, "{}", request.encoded_len());
        assert!(request.encoded_len() < MAX_MESSAGE_BYTES);
        assert_eq!(request.device_id, "cam-1");
    }
    // A sample larger than the target still travels, alone.
    let big = v1::Sample {
        seq: 1,
        input: Some(v1::EncodedTensor { data: vec![0; 1000], ..Default::default() }),
        ..Default::default()
    };
    let alone = split_upload("cam-1", vec![big.clone(), big], 500);
    assert_eq!(alone.iter().map(|r| r.samples.len()).collect::<Vec<_>>(), vec![1, 1]);
}

#[test]
fn the_manifest_summary_reflects_the_manifest() {
    let spec = ConvBnClassifier::seeded(3, 4, 5, 9);
    let manifest = Manifest::parse(&spec.manifest_toml()).expect("manifest");
    let model: OnnxModel = spec.model().expect("model");
    manifest.check_model(&model).expect("consistent");
    let summary = through_the_wire(&cema_proto::manifest_summary(&manifest));
    assert_eq!(summary.input_name, "input");
    assert_eq!(summary.input_shape, vec![3, 5, 5]);
    assert_eq!(summary.layout, "nchw");
    assert_eq!(summary.pixels, v1::PixelType::F32 as i32);
    assert_eq!((summary.output_name.as_str(), summary.num_classes), ("logits", 4));
}

#[test]
fn bearer_tokens_parse_strictly() {
    assert_eq!(cema_proto::parse_bearer(&cema_proto::bearer("abc")), Some("abc"));
    assert_eq!(cema_proto::parse_bearer("Basic abc"), None);
    assert_eq!(cema_proto::parse_bearer("Bearer "), None);
}
