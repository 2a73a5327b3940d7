//! Backup of a serving cloud and restore into a new folder: the restored cloud lists the same
//! scopes and versions, serves the same latest version and acknowledged seq, and accepts the
//! same device tokens. A damaged backup or a non-empty target is refused and writes nothing.
#![allow(clippy::unwrap_used)] // a failing test should panic where it fails

mod support;

use std::path::Path;
use std::process::{Command, Output};

use cema_proto::v1::UploadRequest;
use support::*;

fn cloud_cli(bins: &cema_sim::fleet::Binaries, data: &Path, args: &[&str]) -> Output {
    Command::new(&bins.cloud).arg("--data-dir").arg(data).args(args).output().unwrap()
}

fn ok(output: Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_serving_restores_to_the_same_state() {
    // Every sample stepped on, however late, so the versions below do not depend on how far
    // the engine falls behind the three batches sent at once (newest-data-first is off).
    let TinyCloud { dir, student, bins, data, config, cloud, token } = tiny_cloud_with("max_queue_seconds = 0.0\n");

    // Three batches of 40 samples: steps run, versions are stored.
    let mut c = client(&cloud).await;
    c.register(authed(&token, register("d1", &student))).await.unwrap();
    let requests: Vec<UploadRequest> = (0..3u64).map(|b| upload_request("d1", 1 + b * 41, 40, Some(b + 1))).collect();
    let mut acks = c.upload(authed(&token, tokio_stream::iter(requests))).await.unwrap().into_inner();
    for _ in 0..3 {
        acks.message().await.unwrap().unwrap();
    }
    let mut watch = watch_params(&mut c, &token, "d1").await;
    while watch.message().await.unwrap().unwrap().through_batch < 3 {}

    // Backup through the running cloud's operator API.
    let backup = dir.path().join("state.backup");
    let server = format!("http://{}", cloud.grpc);
    let printed =
        ok(cloud_cli(&bins, &data, &["backup", backup.to_str().unwrap(), "--server", &server, "--plaintext"]));
    assert!(printed.contains("checksum verified"), "{printed}");
    assert!(!dir.path().join("state.partial").exists());
    // The operator token guards it.
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "f".repeat(64)).unwrap();
    let other = dir.path().join("other.backup");
    let refused = cloud_cli(
        &bins,
        &data,
        &[
            "backup",
            other.to_str().unwrap(),
            "--server",
            &server,
            "--plaintext",
            "--operator-token-file",
            wrong.to_str().unwrap(),
        ],
    );
    assert!(!refused.status.success());
    assert!(!other.exists());
    cloud.stop().unwrap();
    let original = ok(cloud_cli(&bins, &data, &["params", "list", "--json"]));
    assert!(original.contains("device:d1"), "{original}");

    // Restore into a new folder: the same scopes, versions, steps, replay, queues and seqs.
    let restored = dir.path().join("restored");
    ok(cloud_cli(&bins, &restored, &["restore", backup.to_str().unwrap()]));
    assert_eq!(ok(cloud_cli(&bins, &restored, &["params", "list", "--json"])), original);
    let (ids, meta, acked) = stored_ids(&restored, "device:d1");
    assert_eq!((ids.len(), acked), (120, 123));
    assert!(meta.version >= 3, "versions were restored: {}", meta.version);

    // The restored cloud serves them with the same device token.
    let cloud = cema_sim::fleet::CloudProcess::start(&bins, &restored, &config).unwrap();
    let mut c = client(&cloud).await;
    let registered = c.register(authed(&token, register("d1", &student))).await.unwrap().into_inner();
    assert_eq!((registered.acked_seq, registered.latest_version), (123, meta.version));
    cloud.stop().unwrap();

    // A non-empty folder is refused and left as it was.
    let refused = cloud_cli(&bins, &restored, &["restore", backup.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not empty"));
    // A damaged backup is refused before anything is written.
    let mut bytes = std::fs::read(&backup).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    let damaged = dir.path().join("damaged.backup");
    std::fs::write(&damaged, &bytes).unwrap();
    let target = dir.path().join("from-damaged");
    let refused = cloud_cli(&bins, &target, &["restore", damaged.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not an intact"), "{refused:?}");
    assert!(!target.exists(), "nothing written");
    std::fs::write(&damaged, &std::fs::read(&backup).unwrap()[..middle]).unwrap();
    let refused = cloud_cli(&bins, &target, &["restore", damaged.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("truncated"), "{refused:?}");
    assert!(!target.exists(), "nothing written");
}
