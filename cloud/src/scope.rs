//! Adaptation scopes: which uploads adapt together and which edges share the result.

use std::fmt;
use std::str::FromStr;

/// Whether devices of a model share one adaptation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScopeKind {
    /// Each device adapts on its own uploads and receives its own parameters.
    #[default]
    Device,
    /// All devices of the model share one adaptation.
    Fleet,
}

/// One adaptation scope: a device's own, or a model's fleet. Written `device:<id>` or
/// `fleet:<model>` on the wire, in the store's keys, in `/scopes` and in metrics labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopeId {
    /// The scope of one device (`ScopeKind::Device`).
    Device(String),
    /// The scope every device of a model shares (`ScopeKind::Fleet`).
    Fleet(String),
}

impl ScopeId {
    /// The device scope of `device`.
    pub fn device(device: impl Into<String>) -> Self {
        Self::Device(device.into())
    }

    /// The fleet scope of `model`.
    pub fn fleet(model: impl Into<String>) -> Self {
        Self::Fleet(model.into())
    }

    /// The device of a device scope.
    pub fn device_id(&self) -> Option<&str> {
        match self {
            Self::Device(device) => Some(device),
            Self::Fleet(_) => None,
        }
    }
}

impl fmt::Display for ScopeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Device(device) => write!(f, "device:{device}"),
            Self::Fleet(model) => write!(f, "fleet:{model}"),
        }
    }
}

/// A scope id that is neither `device:<id>` nor `fleet:<model>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scope `{0}` is neither device:<id> nor fleet:<model>")]
pub struct ScopeIdError(pub String);

impl FromStr for ScopeId {
    type Err = ScopeIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parsed = match text.split_once(':') {
            Some(("device", device)) if !device.is_empty() => Self::device(device),
            Some(("fleet", model)) if !model.is_empty() => Self::fleet(model),
            _ => return Err(ScopeIdError(text.to_owned())),
        };
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_ids_round_trip_through_their_text() {
        for scope in [ScopeId::device("cam-1"), ScopeId::fleet("student"), ScopeId::device("a:b")] {
            assert_eq!(scope.to_string().parse::<ScopeId>(), Ok(scope));
        }
        assert_eq!("device:cam".parse::<ScopeId>().unwrap().device_id(), Some("cam"));
        for bad in ["", "device:", "fleet:", "cam", "devices:x", ":x"] {
            assert_eq!(bad.parse::<ScopeId>(), Err(ScopeIdError(bad.to_owned())), "{bad}");
        }
    }
}
