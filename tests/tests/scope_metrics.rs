//! `/metrics` per scope, with a bounded label set: a cloud process with three device scopes and
//! `scope_metrics_limit = 2` labels the first two (in scope order) with their replay sizes,
//! versions and watchers, leaves the third out and counts it as omitted.
#![allow(clippy::unwrap_used)] // a failing test should panic where it fails

mod support;

use cema_sim::fleet::{self, http_get};
use support::*;

/// The value of `family{scope="…"}` in a Prometheus text, if present.
fn scoped(text: &str, family: &str, scope: &str) -> Option<f64> {
    fleet::metric(text, &format!("{family}{{scope=\"{scope}\"}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_scope_metrics_label_at_most_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (student, foundation) = tiny_models(dir.path());
    let bins = binaries();
    let config = format!("scope_metrics_limit = 2\n{}", config(&student, &foundation, ""));
    let devices = ["d1", "d2", "d3"];
    let (cloud, tokens) = cloud_with_devices(&bins, &dir.path().join("cloud"), &config, &devices);
    let mut c = client(&cloud).await;
    for (i, (device, token)) in devices.iter().zip(&tokens).enumerate() {
        let token = support::token(token);
        c.register(authed(&token, register(device, &student))).await.unwrap();
        // 10, 11 and 12 samples without a batch end: they stay queued and in the replay buffer.
        let request = upload_request(device, 1, 10 + i as u64, None);
        let mut acks = c.upload(authed(&token, tokio_stream::iter(vec![request]))).await.unwrap().into_inner();
        acks.message().await.unwrap().unwrap();
    }
    // d1 keeps a parameter stream open.
    let _watch = watch_params(&mut c, &support::token(&tokens[0]), "d1").await;

    let text = http_get(cloud.admin, "/metrics").unwrap().1;
    assert_eq!(scoped(&text, "cema_cloud_scope_replay_samples", "device:d1"), Some(10.0), "{text}");
    assert_eq!(scoped(&text, "cema_cloud_scope_replay_samples", "device:d2"), Some(11.0), "{text}");
    assert_eq!(scoped(&text, "cema_cloud_scope_queued_samples", "device:d2"), Some(11.0), "{text}");
    assert_eq!(scoped(&text, "cema_cloud_scope_params_version", "device:d1"), Some(0.0), "{text}");
    assert_eq!(scoped(&text, "cema_cloud_scope_watchers", "device:d1"), Some(1.0), "{text}");
    assert_eq!(scoped(&text, "cema_cloud_scope_watchers", "device:d2"), Some(0.0), "{text}");
    assert!(!text.contains("device:d3"), "the third scope is beyond the limit: {text}");
    assert_eq!(fleet::metric(&text, "cema_cloud_scope_metrics_omitted"), Some(1.0), "{text}");
    // Each family has exactly the limit's number of series.
    let series = text.lines().filter(|l| l.starts_with("cema_cloud_scope_steps_total{")).count();
    assert_eq!(series, 2, "{text}");
    cloud.stop().unwrap();
}
