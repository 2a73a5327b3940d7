//! The serving loop of an agent: a source's samples, batch by batch, through
//! [`Agent::push`], one JSON line per prediction, paced in real time or in lockstep with the
//! cloud, stopped by a flag, then the outbox drained. `cema-edge run` is this loop with a
//! source and flags around it; an embedding program calls [`serve`] the same way.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cema_core::SampleValues;

use crate::agent::{Agent, AgentError, PredictionRecord};
use crate::link::LinkTasks;

/// One streamed sample: its id, its values, and its label when known.
pub type Item = (String, SampleValues, Option<u32>);

/// What [`serve`] streams: `len` samples, fetched by position range `[start, end)`.
pub struct Source {
    /// Fetches the samples at positions `start..end`.
    pub samples: Box<dyn FnMut(u64, u64) -> Vec<Item>>,
    /// Samples in the stream.
    pub len: u64,
}

/// How [`serve`] runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Samples per batch.
    pub batch: u64,
    /// Stop after this many positions of the source.
    pub limit: Option<u64>,
    /// Images per second to pace to (`None`: as fast as the agent goes).
    pub fps: Option<f64>,
}

/// What a run served.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServeSummary {
    /// Predictions served.
    pub served: u64,
    /// Of those, uploaded.
    pub uploaded: u64,
    /// Predictions with a label.
    pub labelled: u64,
    /// Of those, correct.
    pub correct: u64,
    /// Wall time of the loop.
    pub seconds: f64,
}

/// Why the loop stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The agent failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The predictions could not be written.
    #[error("writing predictions: {0}")]
    Output(#[from] std::io::Error),
}

/// A prediction as the JSON line `cema-edge run` writes.
pub fn json_line(id: &str, batch: u64, label: Option<u32>, record: &PredictionRecord) -> String {
    format!(
        "{{\"id\":{},\"batch\":{batch},\"class\":{},\"label\":{},\"probability\":{:.6},\"entropy\":{:.6},\"params_version\":{},\"uploaded\":{}}}",
        serde_json::Value::String(id.to_owned()),
        record.class,
        label.map_or("null".to_owned(), |l| l.to_string()),
        record.probability,
        record.entropy,
        record.params_version,
        record.uploaded
    )
}

/// Serves `source` through `agent` until it ends or `stop` is set: resumes after the batches a
/// previous run already served, writes one line per prediction to `out` (flushed at the end),
/// waits for the cloud after each batch when `linked` (lockstep pacing waits, others return at
/// once), and paces to `options.fps`. Then call [`finish`].
pub fn serve(
    agent: &mut Agent,
    source: &mut Source,
    linked: bool,
    handle: &tokio::runtime::Handle,
    out: &mut dyn Write,
    stop: &AtomicBool,
    options: &ServeOptions,
) -> Result<ServeSummary, ServeError> {
    let batch = options.batch.max(1);
    let end = source.len.min(options.limit.unwrap_or(u64::MAX));
    // Resume after the batches a previous run already served from the same source.
    let mut position = (agent.batches() * batch).min(end);
    if position > 0 {
        tracing::info!(position, "resuming the stream after the batches already served");
    }
    let started = Instant::now();
    let mut summary = ServeSummary::default();
    while position < end && !stop.load(Ordering::Acquire) {
        let next = (position + batch).min(end);
        let items = (source.samples)(position, next);
        let values: Vec<SampleValues> = items.iter().map(|(_, v, _)| v.clone()).collect();
        let records = agent.push(&values)?;
        for ((id, _, label), record) in items.iter().zip(&records) {
            summary.served += 1;
            summary.uploaded += record.uploaded as u64;
            if let Some(label) = label {
                summary.labelled += 1;
                summary.correct += (*label as usize == record.class) as u64;
            }
            writeln!(out, "{}", json_line(id, agent.batches(), *label, record))?;
        }
        position = next;
        if linked {
            agent.wait_for_cloud(handle)?;
        }
        if let Some(fps) = options.fps {
            let due = started + Duration::from_secs_f64(summary.served as f64 / fps);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
    }
    out.flush()?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Ends a served stream: waits up to `drain_timeout` for the outbox to drain and stops the
/// link. Returns whether it drained (what is left is resent on the next start).
pub fn finish(agent: &Agent, link: LinkTasks, handle: &tokio::runtime::Handle, drain_timeout: Duration) -> bool {
    let drained = agent.drain(handle, drain_timeout);
    if !drained {
        tracing::warn!(entries = agent.outbox().usage().0, "outbox not drained; it is resent on the next start");
    }
    handle.block_on(link.stop());
    drained
}
