//! The `cema.v1` gRPC contract between CEMA edge agents and the cloud.
//!
//! The `.proto` files under `cema/v1/` are the source of truth; every message and field is
//! documented there, including how errors map to status codes and the message-size policy.
//! This crate compiles them (protox, no `protoc`), re-exports the generated types and
//! service stubs, and converts between wire messages and `cema-core` types so both sides
//! validate the same way. Its networking policy is the constants below and [`transport`]:
//! TLS by default on both sides, plaintext only when asked for.

mod convert;
pub mod transport;

pub use convert::{
    ConvertError, manifest_summary, norm_params_from_wire, norm_params_to_wire, sample_from_wire, sample_to_wire,
    statistics_from_wire, statistics_to_wire,
};

/// Generated messages and service stubs of package `cema.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("cema.v1");
}

/// Largest encoded gRPC message either side sends or accepts (tonic's default is 4 MiB,
/// too small for a batch of ImageNet-size uploads).
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// Size senders aim below when they split an upload batch into `UploadRequest`s: a quarter of
/// the hard limit, so framing and field overhead never push a request over it.
pub const UPLOAD_BATCH_TARGET_BYTES: usize = MAX_MESSAGE_BYTES / 4;

/// Splits samples into `UploadRequest`s whose encoded size stays at or below `target_bytes`
/// (use [`UPLOAD_BATCH_TARGET_BYTES`]), keeping their order. A single sample larger than the
/// target travels alone; the receiver refuses it only if it exceeds [`MAX_MESSAGE_BYTES`].
pub fn split_upload(device_id: &str, samples: Vec<v1::Sample>, target_bytes: usize) -> Vec<v1::UploadRequest> {
    use prost::Message;
    let empty = || v1::UploadRequest { device_id: device_id.to_owned(), samples: Vec::new(), batch_ends: Vec::new() };
    let mut requests = Vec::new();
    let mut current = empty();
    let mut size = current.encoded_len();
    for sample in samples {
        // A repeated message field costs its length, a length prefix and one tag byte.
        let cost = sample.encoded_len() + prost::length_delimiter_len(sample.encoded_len()) + 1;
        if !current.samples.is_empty() && size + cost > target_bytes {
            requests.push(std::mem::replace(&mut current, empty()));
            size = current.encoded_len();
        }
        size += cost;
        current.samples.push(sample);
    }
    if !current.samples.is_empty() {
        requests.push(current);
    }
    requests
}

/// Metadata key carrying the device's bearer token.
pub const AUTHORIZATION: &str = "authorization";

/// The metadata value for a device token: `Bearer <token>`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Extracts the token from an `authorization` metadata value of the form `Bearer <token>`.
pub fn parse_bearer(value: &str) -> Option<&str> {
    let token = value.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then_some(token)
}
