//! Device identity: who may talk to the cloud, and as which device.
//!
//! `cema-cloud device add <id>` issues a token `<id>.<64 hex digits>` (256 random bits). Only
//! the SHA-256 of the secret part is stored, so a copy of the data directory does not reveal
//! any token; the token itself is shown once. Authentication hashes the presented secret and
//! compares it with the stored hash in constant time, and does the same work for unknown
//! devices, so response time tells nothing about which devices exist.

use prost::Message;
use sha2::{Digest, Sha256};

/// Name of the sled tree holding device records.
const DEVICES_TREE: &str = "devices";
/// Longest device id accepted.
pub const MAX_DEVICE_ID_LEN: usize = 64;
/// Random bytes in a token's secret.
const SECRET_BYTES: usize = 32;

/// A device as stored (the token hash never leaves this module).
#[derive(Clone, PartialEq, Message)]
struct StoredDevice {
    #[prost(string, tag = "1")]
    model_id: String,
    #[prost(bytes = "vec", tag = "2")]
    token_hash: Vec<u8>,
    #[prost(uint64, tag = "3")]
    created_unix_s: u64,
    #[prost(bool, tag = "4")]
    revoked: bool,
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The device id.
    pub id: String,
    /// The model registered for it.
    pub model_id: String,
    /// When it was added (Unix seconds).
    pub created_unix_s: u64,
    /// Whether its token was revoked.
    pub revoked: bool,
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The id is empty, too long, or has characters outside `[A-Za-z0-9_-]`.
    #[error("invalid {what} `{id}`: use 1–{MAX_DEVICE_ID_LEN} characters from A–Z, a–z, 0–9, `_` and `-`")]
    InvalidId {
        /// `device id` or `model id`.
        what: &'static str,
        /// The id given.
        id: String,
    },
    /// A device with this id exists; its token is not reissued.
    #[error("device `{0}` already exists; revoke it and add it under a new id to issue a new token")]
    AlreadyExists(String),
    /// No device has this id.
    #[error("no device `{0}`")]
    UnknownDevice(String),
    /// The device was revoked; revoked ids are not given tokens again.
    #[error("device `{0}` is revoked; add the device under a new id")]
    Revoked(String),
    /// The stored record cannot be decoded.
    #[error("stored record of device `{0}` is corrupt")]
    Corrupt(String),
    /// The operating system could not supply random bytes.
    #[error("cannot generate a token: {0}")]
    Random(String),
    /// sled failed.
    #[error("device registry storage: {0}")]
    Storage(#[from] sled::Error),
}

/// Why a token was not accepted. The cloud answers all of these with `UNAUTHENTICATED`;
/// the distinction is for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not of the form `<id>.<64 hex digits>`.
    #[error("malformed token")]
    Malformed,
    /// The device does not exist.
    #[error("unknown device")]
    UnknownDevice,
    /// The secret does not match.
    #[error("wrong token")]
    WrongToken,
    /// The device's token was revoked.
    #[error("revoked device")]
    Revoked,
    /// The registry could not be read.
    #[error("registry unavailable")]
    Unavailable,
}

/// The device registry, stored in a sled tree of the cloud's database.
#[derive(Debug, Clone)]
pub struct DeviceRegistry {
    db: sled::Db,
    devices: sled::Tree,
}

pub(crate) fn valid_id(id: &str) -> bool {
    (1..=MAX_DEVICE_ID_LEN).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn hash(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Equality of two 32-byte hashes in time independent of where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl DeviceRegistry {
    /// Opens the registry in the cloud's database.
    pub fn open(db: &sled::Db) -> Result<Self, RegistryError> {
        Ok(Self { db: db.clone(), devices: db.open_tree(DEVICES_TREE)? })
    }

    /// Adds a device for `model_id` and returns its token, which is not stored and cannot be
    /// shown again. The record is flushed to disk before the token is returned.
    pub fn add(&self, id: &str, model_id: &str) -> Result<String, RegistryError> {
        for (what, value) in [("device id", id), ("model id", model_id)] {
            if !valid_id(value) {
                return Err(RegistryError::InvalidId { what, id: value.to_owned() });
            }
        }
        let secret_hex = new_secret()?;
        let record = StoredDevice {
            model_id: model_id.to_owned(),
            token_hash: hash(secret_hex.as_bytes()).to_vec(),
            created_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            revoked: false,
        };
        let _writes = crate::store::write_guard();
        let inserted = self.devices.compare_and_swap(id, None::<&[u8]>, Some(record.encode_to_vec()))?;
        if inserted.is_err() {
            return Err(RegistryError::AlreadyExists(id.to_owned()));
        }
        self.db.flush()?;
        Ok(format!("{id}.{secret_hex}"))
    }

    /// Every device, sorted by id.
    pub fn list(&self) -> Result<Vec<Device>, RegistryError> {
        self.devices
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                let id = String::from_utf8_lossy(&key).into_owned();
                decode(&id, &value)
            })
            .collect()
    }

    /// The device with this id.
    pub fn get(&self, id: &str) -> Result<Device, RegistryError> {
        let value = self.devices.get(id)?.ok_or_else(|| RegistryError::UnknownDevice(id.to_owned()))?;
        decode(id, &value)
    }

    /// Revokes a device's token for good (flushed before returning).
    pub fn revoke(&self, id: &str) -> Result<Device, RegistryError> {
        self.update(id, |record| {
            record.revoked = true;
            Ok(())
        })
    }

    /// Replaces a device's token by a new one, returned once; the old one stops working
    /// (flushed before returning). A revoked device is refused.
    pub fn rotate(&self, id: &str) -> Result<String, RegistryError> {
        let secret_hex = new_secret()?;
        self.update(id, |record| {
            if record.revoked {
                return Err(RegistryError::Revoked(id.to_owned()));
            }
            record.token_hash = hash(secret_hex.as_bytes()).to_vec();
            Ok(())
        })?;
        Ok(format!("{id}.{secret_hex}"))
    }

    /// Changes a stored record and flushes it; `change` failing changes nothing.
    fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut StoredDevice) -> Result<(), RegistryError>,
    ) -> Result<Device, RegistryError> {
        if !valid_id(id) {
            return Err(RegistryError::InvalidId { what: "device id", id: id.to_owned() });
        }
        let _writes = crate::store::write_guard();
        let value = self.devices.get(id)?.ok_or_else(|| RegistryError::UnknownDevice(id.to_owned()))?;
        let mut record = StoredDevice::decode(value.as_ref()).map_err(|_| RegistryError::Corrupt(id.to_owned()))?;
        change(&mut record)?;
        self.devices.insert(id, record.encode_to_vec())?;
        self.db.flush()?;
        decode(id, &record.encode_to_vec())
    }

    /// The device a bearer token belongs to.
    pub fn authenticate(&self, token: &str) -> Result<Device, AuthError> {
        let (id, secret) = token.rsplit_once('.').ok_or(AuthError::Malformed)?;
        if !valid_id(id) || secret.len() != 2 * SECRET_BYTES || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AuthError::Malformed);
        }
        let presented = hash(secret.as_bytes());
        let stored = self.devices.get(id).map_err(|_| AuthError::Unavailable)?;
        let Some(value) = stored else {
            // Same work as for a known device, so timing does not reveal which ids exist.
            let _ = constant_time_eq(&presented, &hash(b"no such device"));
            return Err(AuthError::UnknownDevice);
        };
        let record = StoredDevice::decode(value.as_ref()).map_err(|_| AuthError::Unavailable)?;
        let expected: [u8; 32] = record.token_hash.as_slice().try_into().map_err(|_| AuthError::Unavailable)?;
        if !constant_time_eq(&presented, &expected) {
            return Err(AuthError::WrongToken);
        }
        if record.revoked {
            return Err(AuthError::Revoked);
        }
        Ok(Device {
            id: id.to_owned(),
            model_id: record.model_id,
            created_unix_s: record.created_unix_s,
            revoked: false,
        })
    }
}

/// A token secret: 256 random bits as hex.
pub(crate) fn new_secret() -> Result<String, RegistryError> {
    let mut secret = [0u8; SECRET_BYTES];
    getrandom::fill(&mut secret).map_err(|e| RegistryError::Random(e.to_string()))?;
    Ok(hex::encode(secret))
}

/// The SHA-256 of a secret presented as a string, compared with `expected` in constant time.
pub(crate) fn secret_matches(presented: &str, expected: &[u8; 32]) -> bool {
    constant_time_eq(&hash(presented.as_bytes()), expected)
}

/// The SHA-256 of a secret.
pub(crate) fn secret_hash(secret: &str) -> [u8; 32] {
    hash(secret.as_bytes())
}

fn decode(id: &str, value: &[u8]) -> Result<Device, RegistryError> {
    let record = StoredDevice::decode(value).map_err(|_| RegistryError::Corrupt(id.to_owned()))?;
    Ok(Device {
        id: id.to_owned(),
        model_id: record.model_id,
        created_unix_s: record.created_unix_s,
        revoked: record.revoked,
    })
}
