//! Shared helpers of the cloud's integration tests: tiny models with manifests, encoded samples.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use cema_cloud::{ModelEntry, ScopeKind};
use cema_compute::adapt::AdaptConfig;
use cema_core::codec::{self, Compression};
use cema_core::{Manifest, OnnxModel};
use cema_proto::v1;

/// The shipped student's manifest (28×28 grey u8 input, Fashion-MNIST classes), which the
/// tiny models share.
pub(crate) const STUDENT_MANIFEST: &str = include_str!("../../../models/student.toml");

/// A small student and foundation with manifests (`cema_compute::zoo::write_tiny_models`).
pub(crate) fn tiny_models(dir: &Path) -> (PathBuf, PathBuf) {
    cema_compute::zoo::write_tiny_models(dir, STUDENT_MANIFEST).unwrap()
}

/// A model entry over the two files.
pub(crate) fn entry(student: &Path, foundation: &Path, adapt: AdaptConfig, scope: ScopeKind) -> ModelEntry {
    let edge = OnnxModel::load(student).unwrap();
    let f = OnnxModel::load(foundation).unwrap();
    ModelEntry {
        id: "default".into(),
        fingerprint: edge.fingerprint(),
        edge_manifest: Manifest::load(Manifest::path_for(student)).unwrap(),
        edge,
        foundation_manifest: Manifest::load(Manifest::path_for(foundation)).unwrap(),
        foundation: f,
        adapt,
        scope,
        keep_versions: 5,
    }
}

/// A deterministic 28×28 u8 image, encoded for the wire.
pub(crate) fn image(seed: u64) -> v1::EncodedTensor {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let pixels: Vec<u8> = (0..784)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    cema_proto::sample_to_wire(&codec::encode_u8(&[1, 28, 28], &pixels, Compression::None).unwrap())
}
