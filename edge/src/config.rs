//! `cema-edge run`'s settings as one typed struct, layered: defaults, then the TOML file
//! (`--config`), then `CEMA_EDGE_*` environment variables, then flags. The layers above the
//! defaults are tables of the same keys; each key is parsed into its type once, here, so a bad
//! value is refused with its key named before anything is opened.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use cema_core::{Encoding, StatsInit};
use cema_proto::transport::{ClientTlsFiles, ClientTransport, TransportError};
use cema_shift::{Corruption, Protocol};
use serde::Deserialize;

use crate::agent::{AgentConfig, Pacing};
use crate::outbox::{FullPolicy, OutboxLimits};
use crate::selector::{Preset, Redundancy, SelectorConfig};

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file cannot be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A layer is not valid TOML, or a key is unknown or of the wrong type.
    #[error("{layer}: {detail}")]
    Invalid {
        /// `config file <path>` or `flags and environment`.
        layer: String,
        /// What is wrong (serde names the key).
        detail: String,
    },
}

/// A value that is not one of a key's forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} `{value}`: use {forms}")]
pub struct BadValue {
    /// The key.
    pub key: &'static str,
    /// The value given.
    pub value: String,
    /// The forms it takes.
    pub forms: &'static str,
}

impl BadValue {
    fn new(key: &'static str, value: &str, forms: &'static str) -> Self {
        Self { key, value: value.to_owned(), forms }
    }
}

/// Where samples come from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "String")]
pub enum SourceSpec {
    /// A cema-shift scenario over the Fashion-MNIST test set.
    Scenario,
    /// IDX images (`idx:<file>`), labels from `labels`.
    Idx(PathBuf),
    /// A labelled image folder (`folder:<dir>`).
    Folder(PathBuf),
}

/// How the agent paces itself.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "String")]
pub enum PacingSpec {
    /// Use the parameters that have arrived.
    Free,
    /// Wait for the cloud after each batch (up to `lockstep_timeout`).
    Lockstep,
    /// A camera's pace: this many images per second, whatever the cloud does.
    Realtime(f64),
}

/// Where adaptation comes from.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "String")]
pub enum AdaptSpec {
    /// The cloud.
    Cloud,
    /// The edge's own statistics, applied every this many batches.
    Local(u64),
}

/// The redundancy filter's margin: `scaled:<m>`, `raw:<m>` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "String")]
pub struct Margin(pub Redundancy);

/// A scenario protocol by name.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "String")]
pub struct ProtocolName(pub Protocol);

/// Comma-separated corruption names.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "String")]
pub struct Corruptions(pub Vec<Corruption>);

/// How float inputs are uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadEncoding {
    /// Half the bytes; moves the cloud's statistics by ~1e-5 relative.
    F16,
    /// Lossless.
    F32,
}

/// Every setting of `cema-edge run` (see `cema-edge run --help` for each key's meaning).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)] // each key is documented once, on its flag (edge/src/main.rs)
pub struct EdgeConfig {
    pub model: PathBuf,
    pub device_id: Option<String>,
    pub cloud: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    pub plaintext: bool,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub ort_library: Option<PathBuf>,
    pub threads: usize,
    pub source: SourceSpec,
    pub labels: Option<PathBuf>,
    pub protocol: ProtocolName,
    pub corruptions: Option<Corruptions>,
    pub severity: u8,
    pub samples_per_segment: usize,
    pub seed: u64,
    pub scenario_device: u64,
    pub limit: Option<u64>,
    pub batch: usize,
    pub preset: Preset,
    pub e_max_frac: Option<f64>,
    pub e_min_frac: Option<f64>,
    pub warmup_samples: Option<u64>,
    pub lambda: Option<f64>,
    pub d_margin: Option<Margin>,
    pub random_fraction: Option<f64>,
    pub budget: Option<f64>,
    pub pacing: PacingSpec,
    pub compress: bool,
    pub upload_encoding: UploadEncoding,
    pub stats_init: StatsInit,
    pub statistics_uplink: bool,
    pub adapt: AdaptSpec,
    pub max_samples_per_s: Option<f64>,
    pub outbox_max_mib: u64,
    pub outbox_max_entries: u64,
    pub outbox_policy: FullPolicy,
    pub output: Option<PathBuf>,
    pub admin_addr: Option<SocketAddr>,
    pub drain_timeout: f64,
    pub lockstep_timeout: f64,
    pub guard: bool,
    pub drift_reset: bool,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        let outbox = OutboxLimits::default();
        Self {
            model: PathBuf::from("models/student.onnx"),
            device_id: None,
            cloud: None,
            ca_cert: None,
            client_cert: None,
            client_key: None,
            tls_server_name: None,
            plaintext: false,
            token: None,
            token_file: None,
            data_dir: PathBuf::from("cema-edge-data"),
            ort_library: None,
            threads: 1,
            source: SourceSpec::Scenario,
            labels: None,
            protocol: ProtocolName(Protocol::Continual),
            corruptions: None,
            severity: 5,
            samples_per_segment: 1000,
            seed: 0,
            scenario_device: 0,
            limit: None,
            batch: 64,
            preset: Preset::Reference,
            e_max_frac: None,
            e_min_frac: None,
            warmup_samples: None,
            lambda: None,
            d_margin: None,
            random_fraction: None,
            budget: None,
            pacing: PacingSpec::Free,
            compress: false,
            upload_encoding: UploadEncoding::F16,
            stats_init: StatsInit::Source,
            statistics_uplink: false,
            adapt: AdaptSpec::Cloud,
            max_samples_per_s: None,
            outbox_max_mib: outbox.max_bytes >> 20,
            outbox_max_entries: outbox.max_entries,
            outbox_policy: outbox.policy,
            output: None,
            admin_addr: None,
            drain_timeout: 30.0,
            lockstep_timeout: 300.0,
            guard: false,
            drift_reset: false,
        }
    }
}

impl EdgeConfig {
    /// Layers the settings: defaults, the TOML file at `file` (if any), then `overrides` (the
    /// environment and flags, already merged by the command line). Ranges are checked too.
    pub fn layered(file: Option<&Path>, overrides: toml::Table) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                let layer = format!("config file {}", path.display());
                let table: toml::Table =
                    text.parse().map_err(|e: toml::de::Error| ConfigError::Invalid { layer, detail: e.to_string() })?;
                // Checked alone, so an error names the file it is in.
                Self::from_table(table.clone(), &format!("config file {}", path.display()))?;
                table
            }
            None => toml::Table::new(),
        };
        table.extend(overrides);
        Self::from_table(table, "flags and environment")
    }

    fn from_table(table: toml::Table, layer: &str) -> Result<Self, ConfigError> {
        let invalid = |detail: String| ConfigError::Invalid { layer: layer.to_owned(), detail };
        // One line: serde's message, then where (`in `key``).
        let one_line = |e: toml::de::Error| e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
        let config: Self = toml::Value::Table(table).try_into().map_err(|e| invalid(one_line(e)))?;
        let problems = config.problems();
        if problems.is_empty() { Ok(config) } else { Err(invalid(problems.join("; "))) }
    }

    /// Values out of range, all at once.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=5).contains(&self.severity) {
            problems.push(format!("severity {} is not in 1–5", self.severity));
        }
        for (key, share) in [("random_fraction", self.random_fraction), ("budget", self.budget)] {
            if let Some(share) = share
                && !(0.0..=1.0).contains(&share)
            {
                problems.push(format!("{key} {share}: use a share between 0 and 1"));
            }
        }
        if self.batch == 0 || self.threads == 0 {
            problems.push("batch and threads must be at least 1".to_owned());
        }
        for (key, seconds) in [("drain_timeout", self.drain_timeout), ("lockstep_timeout", self.lockstep_timeout)] {
            if !(seconds.is_finite() && seconds >= 0.0) {
                problems.push(format!("{key} {seconds}: use seconds ≥ 0"));
            }
        }
        problems
    }

    /// The selection: the preset with the overrides given.
    pub fn selector(&self) -> SelectorConfig {
        let mut config = self.preset.config();
        config.e_max_frac = self.e_max_frac.or(config.e_max_frac);
        config.e_min_frac = self.e_min_frac.or(config.e_min_frac);
        config.warmup_samples = self.warmup_samples.or(config.warmup_samples);
        config.lambda = self.lambda.unwrap_or(config.lambda);
        config.random_fraction = self.random_fraction.or(config.random_fraction);
        config.budget = self.budget.or(config.budget);
        if let Some(Margin(redundancy)) = self.d_margin {
            config.redundancy = redundancy;
        }
        config
    }

    /// The transport to the cloud (checked before anything is opened: a bad TLS setting
    /// changes no state).
    pub fn transport(&self) -> Result<ClientTransport, TransportError> {
        let files = ClientTlsFiles {
            ca_cert: self.ca_cert.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            server_name: self.tls_server_name.clone(),
        };
        let transport = ClientTransport::from_options(self.plaintext, &files)?;
        if let Some(endpoint) = &self.cloud {
            transport.endpoint(endpoint)?;
        }
        Ok(transport)
    }

    /// The agent's settings for `device_id`.
    pub fn agent(&self, device_id: &str) -> AgentConfig {
        let pacing = match self.pacing {
            PacingSpec::Lockstep => Pacing::Lockstep(Duration::from_secs_f64(self.lockstep_timeout)),
            PacingSpec::Free | PacingSpec::Realtime(_) => Pacing::Free,
        };
        AgentConfig {
            device_id: device_id.to_owned(),
            selector: self.selector(),
            compress: self.compress,
            float_encoding: match self.upload_encoding {
                UploadEncoding::F16 => Encoding::F16,
                UploadEncoding::F32 => Encoding::F32,
            },
            stats_init: self.stats_init,
            uplink_statistics: self.statistics_uplink,
            local_every: match self.adapt {
                AdaptSpec::Cloud => None,
                AdaptSpec::Local(every) => Some(every),
            },
            outbox: OutboxLimits {
                max_bytes: self.outbox_max_mib << 20,
                max_entries: self.outbox_max_entries,
                policy: self.outbox_policy,
            },
            pacing,
            guard: self.guard,
            drift_reset: self.drift_reset,
        }
    }

    /// Images per second under real-time pacing.
    pub fn fps(&self) -> Option<f64> {
        match self.pacing {
            PacingSpec::Realtime(fps) => Some(fps),
            _ => None,
        }
    }
}

impl TryFrom<String> for SourceSpec {
    type Error = BadValue;

    fn try_from(spec: String) -> Result<Self, BadValue> {
        if spec == "scenario" {
            Ok(Self::Scenario)
        } else if let Some(path) = spec.strip_prefix("idx:") {
            Ok(Self::Idx(path.into()))
        } else if let Some(path) = spec.strip_prefix("folder:") {
            Ok(Self::Folder(path.into()))
        } else {
            Err(BadValue::new("source", &spec, "scenario, idx:<file> or folder:<dir>"))
        }
    }
}

impl TryFrom<String> for PacingSpec {
    type Error = BadValue;

    fn try_from(spec: String) -> Result<Self, BadValue> {
        match spec.as_str() {
            "free" => Ok(Self::Free),
            "lockstep" => Ok(Self::Lockstep),
            _ => match spec.strip_prefix("realtime:").and_then(|f| f.parse::<f64>().ok()) {
                Some(fps) if fps > 0.0 && fps.is_finite() => Ok(Self::Realtime(fps)),
                _ => Err(BadValue::new("pacing", &spec, "free, lockstep or realtime:<images per second>")),
            },
        }
    }
}

impl TryFrom<String> for AdaptSpec {
    type Error = BadValue;

    fn try_from(spec: String) -> Result<Self, BadValue> {
        match spec.as_str() {
            "cloud" => Ok(Self::Cloud),
            "local" => Ok(Self::Local(1)),
            _ => match spec.strip_prefix("local:").and_then(|n| n.parse::<u64>().ok()) {
                Some(every) if every > 0 => Ok(Self::Local(every)),
                _ => Err(BadValue::new("adapt", &spec, "cloud, local or local:<batches>")),
            },
        }
    }
}

impl TryFrom<String> for Margin {
    type Error = BadValue;

    fn try_from(margin: String) -> Result<Self, BadValue> {
        let bad = || BadValue::new("d_margin", &margin, "scaled:<m>, raw:<m> or off");
        let number = |m: &str| m.parse::<f64>().ok().filter(|m| m.is_finite() && *m >= 0.0).ok_or_else(bad);
        let redundancy = match margin.split_once(':') {
            _ if margin == "off" => Redundancy::Off,
            Some(("scaled", m)) => Redundancy::Scaled(number(m)?),
            Some(("raw", m)) => Redundancy::Raw(number(m)?),
            _ => return Err(bad()),
        };
        Ok(Self(redundancy))
    }
}

impl TryFrom<String> for ProtocolName {
    type Error = BadValue;

    fn try_from(name: String) -> Result<Self, BadValue> {
        <Protocol as clap::ValueEnum>::from_str(&name, true)
            .map(Self)
            .map_err(|_| BadValue::new("protocol", &name, "independent, continual, gradual or mixed"))
    }
}

impl TryFrom<String> for Corruptions {
    type Error = BadValue;

    fn try_from(list: String) -> Result<Self, BadValue> {
        let names = "comma-separated corruption names (cema-shift list)";
        list.split(',')
            .map(|name| Corruption::from_str(name.trim()).map_err(|_| BadValue::new("corruptions", name.trim(), names)))
            .collect::<Result<_, _>>()
            .map(Self)
    }
}
