//! Resumable training: checkpoints written atomically, and the progress line.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use cema_core::OnnxModel;
use sha2::{Digest, Sha256};

/// A resumable training state: the weights (as ONNX, running statistics included), the
/// optimiser's momentum, the next step, and the settings that produced them.
pub(super) struct Checkpoint {
    pub(super) identity: String,
    pub(super) step: usize,
    pub(super) model: OnnxModel,
    pub(super) velocity: Vec<(String, Vec<f32>)>,
}

const CHECKPOINT_MAGIC: &[u8; 12] = b"CEMA-CKPT-1\n";

impl Checkpoint {
    pub(super) fn write(&self, path: &Path) -> Result<()> {
        let mut bytes = CHECKPOINT_MAGIC.to_vec();
        let mut put = |chunk: &[u8]| {
            bytes.extend_from_slice(&(chunk.len() as u64).to_le_bytes());
            bytes.extend_from_slice(chunk);
        };
        put(self.identity.as_bytes());
        put(&(self.step as u64).to_le_bytes());
        put(&self.model.encode());
        put(&(self.velocity.len() as u64).to_le_bytes());
        for (name, values) in &self.velocity {
            put(name.as_bytes());
            put(&cema_core::onnx::f32_le_bytes(values));
        }
        let digest = Sha256::digest(&bytes);
        bytes.extend_from_slice(&digest);
        write_atomically(path, &bytes)
    }

    pub(super) fn read(path: &Path) -> Result<Option<Self>> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let corrupt = || anyhow::anyhow!("{} is not a valid checkpoint; delete it or use --fresh", path.display());
        let body_len = bytes.len().checked_sub(32).ok_or_else(corrupt)?;
        let (body, digest) = bytes.split_at(body_len);
        if !body.starts_with(CHECKPOINT_MAGIC) || Sha256::digest(body).as_slice() != digest {
            return Err(corrupt());
        }
        let mut rest = &body[CHECKPOINT_MAGIC.len()..];
        let mut take = || -> Result<&[u8]> {
            let len = rest.get(..8).ok_or_else(corrupt)?;
            let len = u64::from_le_bytes(len.try_into()?) as usize;
            let chunk = rest.get(8..8 + len).ok_or_else(corrupt)?;
            rest = &rest[8 + len..];
            Ok(chunk)
        };
        let number = |chunk: &[u8]| -> Result<usize> { Ok(u64::from_le_bytes(chunk.try_into()?) as usize) };
        let identity = String::from_utf8(take()?.to_vec())?;
        let step = number(take()?)?;
        let model = OnnxModel::decode(take()?)?;
        let count = number(take()?)?;
        let mut velocity = Vec::with_capacity(count.min(4096));
        for _ in 0..count {
            let name = String::from_utf8(take()?.to_vec())?;
            let values = take()?.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            velocity.push((name, values));
        }
        Ok(Some(Self { identity, step, model, velocity }))
    }
}

/// Writes through a temporary file and a rename, so a crash leaves the old file or the new one.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes).and_then(|_| file.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// One progress line on stderr: rewritten in place on a terminal, printed every 2% otherwise.
pub(super) struct ProgressLine {
    name: &'static str,
    total: usize,
    batch: usize,
    terminal: bool,
    started: Instant,
    steps_this_run: usize,
    loss: Option<f64>,
    accuracy: Option<f64>,
    last_printed: usize,
}

impl ProgressLine {
    pub(super) fn new(name: &'static str, total: usize, batch: usize) -> Self {
        Self {
            name,
            total,
            batch,
            terminal: std::io::stderr().is_terminal(),
            started: Instant::now(),
            steps_this_run: 0,
            loss: None,
            accuracy: None,
            last_printed: 0,
        }
    }

    pub(super) fn update(&mut self, done: usize, epoch: usize, epochs: usize, loss: f32, accuracy: f64) {
        let smooth = |old: Option<f64>, new: f64| Some(old.map_or(new, |o| 0.95 * o + 0.05 * new));
        self.loss = smooth(self.loss, loss as f64);
        self.accuracy = smooth(self.accuracy, accuracy);
        self.steps_this_run += 1;
        let every = (self.total / 50).max(1);
        if !self.terminal && done - self.last_printed < every && done != self.total {
            return;
        }
        self.last_printed = done;
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = (self.steps_this_run * self.batch) as f64 / elapsed.max(1e-9);
        let eta = (self.total - done) as f64 * self.batch as f64 / rate.max(1e-9);
        let width = 24;
        let filled = width * done / self.total.max(1);
        let line = format!(
            "{} epoch {}/{} [{}{}] {done}/{} loss {:.3} acc {:.1}% {rate:.0} img/s eta {}m{:02}s",
            self.name,
            epoch + 1,
            epochs,
            "#".repeat(filled),
            ".".repeat(width - filled),
            self.total,
            self.loss.unwrap_or(f64::NAN),
            100.0 * self.accuracy.unwrap_or(f64::NAN),
            (eta / 60.0) as u64,
            (eta % 60.0) as u64
        );
        if self.terminal {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }

    pub(super) fn finish(&self) {
        if self.terminal && self.steps_this_run > 0 {
            eprintln!();
        }
    }
}
