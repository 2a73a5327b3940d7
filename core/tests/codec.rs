//! The sample codec: lossless round trips, f16 precision, and hostile payloads.

use cema_core::codec::{encode_f32, encode_u8};
use cema_core::onnx::generate::SplitMix64;
use cema_core::{CodecError, Compression, DecodeLimits, EncodedSample, Encoding, SampleValues};

const DIMS: [u64; 3] = [1, 28, 28];

fn limits() -> DecodeLimits {
    DecodeLimits::for_dims(&[1, 28, 28])
}

fn pixels() -> Vec<u8> {
    // An image-like ramp compresses; uniform noise would not.
    (0..784).map(|i| ((i % 28) * 9) as u8).collect()
}

#[test]
fn u8_round_trips_with_and_without_zstd() {
    for compression in [Compression::None, Compression::Zstd] {
        let sample = encode_u8(&DIMS, &pixels(), compression).expect("encode");
        assert_eq!(sample.decode(limits()).expect("decode"), SampleValues::U8(pixels()));
    }
    let raw = encode_u8(&DIMS, &pixels(), Compression::None).expect("encode");
    let packed = encode_u8(&DIMS, &pixels(), Compression::Zstd).expect("encode");
    assert_eq!(raw.data.len(), 784);
    assert!(packed.data.len() < raw.data.len() / 4, "zstd gave {} bytes", packed.data.len());
}

#[test]
fn f32_is_exact_and_f16_is_within_half_precision() {
    let mut rng = SplitMix64::new(5);
    let values = rng.vec(784, -3.0, 3.0);
    for compression in [Compression::None, Compression::Zstd] {
        let exact = encode_f32(&DIMS, &values, Encoding::F32, compression).expect("encode");
        assert_eq!(exact.decode(limits()).expect("decode"), SampleValues::F32(values.clone()));
        let half = encode_f32(&DIMS, &values, Encoding::F16, compression).expect("encode");
        let SampleValues::F32(back) = half.decode(limits()).expect("decode") else {
            panic!("f16 must decode to f32");
        };
        for (a, b) in values.iter().zip(&back) {
            // f16 has an 11-bit significand: relative error ≤ 2^-11.
            assert!((a - b).abs() <= a.abs() * 4.9e-4 + 1e-7, "{a} vs {b}");
        }
    }
}

#[test]
fn dims_beyond_the_limit_are_refused_before_allocation() {
    let huge = EncodedSample {
        encoding: Encoding::F32,
        compression: Compression::Zstd,
        dims: vec![u64::MAX, 2],
        data: vec![0; 8],
    };
    assert!(matches!(huge.decode(limits()), Err(CodecError::TooLarge { .. })));
    let bigger =
        EncodedSample { dims: vec![1, 29, 28], ..encode_u8(&DIMS, &pixels(), Compression::None).expect("encode") };
    assert!(matches!(bigger.decode(limits()), Err(CodecError::TooLarge { max_elements: 784, .. })));
}

#[test]
fn wrong_lengths_are_refused() {
    let mut short = encode_u8(&DIMS, &pixels(), Compression::None).expect("encode");
    short.data.pop();
    assert_eq!(short.decode(limits()), Err(CodecError::LengthMismatch { expected: 784, actual: 783 }));
    // The zstd frame holds fewer bytes than the dims require.
    let small = encode_u8(&[1, 27, 28], &pixels()[..756], Compression::Zstd).expect("encode");
    let lying = EncodedSample { dims: DIMS.to_vec(), ..small };
    assert!(matches!(lying.decode(limits()), Err(CodecError::Zstd { expected: 784, .. })));
}

#[test]
fn oversized_zstd_payloads_are_refused() {
    // A zstd bomb: 64 MiB of zeros compresses to a few KiB. The decoder must never inflate it.
    let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).expect("compress");
    assert!(bomb.len() < 64 << 10);
    let sample =
        EncodedSample { encoding: Encoding::U8, compression: Compression::Zstd, dims: DIMS.to_vec(), data: bomb };
    let err = sample.decode(limits()).expect_err("bomb accepted");
    assert!(matches!(err, CodecError::Zstd { expected: 784, .. }), "{err}");

    // A frame that hides its size still cannot write past the bound.
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).expect("encoder");
    encoder.include_contentsize(false).expect("flag");
    std::io::Write::write_all(&mut encoder, &vec![7u8; 100_000]).expect("write");
    let hidden = EncodedSample { data: encoder.finish().expect("finish"), ..sample };
    assert!(matches!(hidden.decode(limits()), Err(CodecError::Zstd { .. })));
}

#[test]
fn non_finite_floats_are_refused() {
    let mut values = vec![0.5f32; 784];
    values[100] = f32::NAN;
    let sample = encode_f32(&DIMS, &values, Encoding::F32, Compression::None).expect("encode");
    assert!(matches!(sample.decode(limits()), Err(CodecError::NonFinite { index: 100, .. })));
    values[100] = 1e6; // beyond f16's range: becomes infinity, which is refused too
    let sample = encode_f32(&DIMS, &values, Encoding::F16, Compression::None).expect("encode");
    assert!(matches!(sample.decode(limits()), Err(CodecError::NonFinite { index: 100, .. })));
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = SplitMix64::new(99);
    for round in 0..2000 {
        let len = (rng.next_u64() % 3200) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let mut data = data;
        if round % 2 == 0 && data.len() >= 4 {
            data[..4].copy_from_slice(&[0x28, 0xB5, 0x2F, 0xFD]); // zstd magic
        }
        let encoding = [Encoding::U8, Encoding::F16, Encoding::F32][round % 3];
        let compression = if round % 2 == 0 { Compression::Zstd } else { Compression::None };
        let dims = vec![1, rng.next_u64() % 40, rng.next_u64() % 40];
        let _ = EncodedSample { encoding, compression, dims, data }.decode(limits());
    }
}
