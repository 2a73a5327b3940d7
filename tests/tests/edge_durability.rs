//! The agent never loses a selected sample: it streams while the cloud is down, is killed
//! with -9 between selection and acknowledgement, restarts, and once the cloud is up its
//! outbox drains — the cloud then holds every selected sample exactly once.
#![allow(clippy::unwrap_used)] // a failing test should panic where it fails

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use cema_sim::fleet::{self, CloudProcess};
use support::*;

#[test]
fn cloud_down_kill_9_and_restart_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (student, foundation) = tiny_models(dir.path());
    let bins = binaries();
    let data = dir.path().join("cloud");
    std::fs::create_dir_all(&data).unwrap();
    let token = fleet::add_device(&bins, &data, "cam", "default").unwrap();
    let config = config(&student, &foundation, "");
    // The cloud's port, reserved now, listened on only later.
    let port = fleet::free_port().unwrap();
    let edge_state = dir.path().join("edge");
    let edge = |output: &str| {
        let mut cmd = Command::new(&bins.edge);
        cmd.args(["run", "--device-id", "cam", "--corruptions", "gaussian_noise", "--samples-per-segment", "640"])
            .args(["--preset", "upload-all", "--pacing", "realtime:320", "--drain-timeout", "120"])
            .arg("--model")
            .arg(&student)
            .arg("--cloud")
            .arg(format!("http://127.0.0.1:{port}"))
            .arg("--plaintext")
            .arg("--token-file")
            .arg(&token)
            .arg("--data-dir")
            .arg(&edge_state)
            .arg("--output")
            .arg(dir.path().join(output))
            .env("CEMA_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(format!("{output}.log"))).unwrap());
        cmd
    };

    // Cloud down: the agent predicts, selects into its outbox, retries the connection…
    let mut first = edge("first.jsonl").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    // …and dies between selection and acknowledgement.
    first.kill().unwrap();
    first.wait().unwrap();
    let served_first = std::fs::read_to_string(dir.path().join("first.jsonl")).unwrap_or_default().lines().count();
    assert!(served_first < 640, "the kill came before the stream ended");

    // The cloud comes up on the reserved port; the agent restarts on the same state.
    let cloud = start_on_port(&bins, &data, &config, port);
    let status = edge("second.jsonl").status().unwrap();
    assert!(status.success(), "{}", fleet::tail(&dir.path().join("second.jsonl.log")));
    let summary = cema_sim::report::edge_summary(&dir.path().join("second.jsonl.log"));
    cloud.stop().unwrap();

    // Every prediction of the stream was selected (upload-all) and reached the cloud once.
    let (_, meta, acked) = stored_ids(&data, "device:cam");
    let db = sled::open(data.join("state")).unwrap();
    let store = cema_cloud::store::Store::open(&db).unwrap();
    let ids: Vec<u64> = (meta.replay_head..meta.replay_next).collect();
    let stored = store.replay_samples(&cema_cloud::ScopeId::device("cam"), &ids).unwrap();
    let unique: BTreeSet<Vec<u8>> = stored.iter().map(|t| t.data.clone()).collect();
    assert_eq!(stored.len(), 640, "samples stored (agent summary: {summary:?})");
    assert_eq!(unique.len(), 640, "no sample stored twice");
    assert_eq!(acked, 640 + 10, "640 samples and 10 batch ends, each seq once");
}

fn start_on_port(bins: &cema_sim::fleet::Binaries, data: &std::path::Path, config: &str, port: u16) -> CloudProcess {
    // CloudProcess picks its own ports; this cloud must listen where the agent already points.
    let admin = fleet::free_port().unwrap();
    let path = data.join("fixed.toml");
    std::fs::write(
        &path,
        format!("grpc_addr = \"127.0.0.1:{port}\"\nadmin_addr = \"127.0.0.1:{admin}\"\nplaintext = true\n{config}"),
    )
    .unwrap();
    CloudProcess::start_with_config_file(
        bins,
        data,
        &path,
        format!("127.0.0.1:{port}").parse().unwrap(),
        format!("127.0.0.1:{admin}").parse().unwrap(),
    )
    .unwrap()
}
