//! Operators on a running cloud: the operator token guards the `cema.v1.Operator` service and
//! admin `/scopes`; a device added while serving uploads at once; a revoked or rotated token's
//! open streams end with UNAUTHENTICATED; bad requests are refused and change nothing.
#![allow(clippy::unwrap_used)] // a failing test should panic where it fails

mod support;

use std::time::Duration;

use cema_proto::v1::operator_client::OperatorClient;
use cema_proto::v1::{AddDeviceRequest, DeviceRef, ListDevicesRequest};
use cema_sim::fleet::http_get_with;
use support::*;
use tonic::Code;
use tonic::transport::Channel;

async fn operator(cloud: &cema_sim::fleet::CloudProcess) -> OperatorClient<Channel> {
    OperatorClient::connect(format!("http://{}", cloud.grpc)).await.unwrap()
}

/// The next message of a stream that must end with `code` within a minute.
async fn ends_with<T: std::fmt::Debug>(stream: &mut tonic::Streaming<T>, code: Code) -> tonic::Status {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await.expect("the stream did not end") {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => {
                assert_eq!(status.code(), code, "{status:?}");
                return status;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_manage_devices_on_a_running_cloud() {
    let TinyCloud { dir: _dir, student, bins, data, cloud, token: device_token, .. } = tiny_cloud();
    let operator_token = token(&data.join("operator.token"));
    assert_eq!(operator_token.len(), 64, "256 random bits as hex");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("operator.token")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "only the owner may read the operator token");
    }
    let mut ops = operator(&cloud).await;
    let add = |id: &str, model: &str| AddDeviceRequest { device_id: id.into(), model_id: model.into() };

    // Without the operator token, or with a device's: refused.
    let refused = ops.add_device(tonic::Request::new(add("d2", "default"))).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let refused = ops.add_device(authed(&device_token, add("d2", "default"))).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    // Bad requests name the problem and change nothing.
    let bad = ops.add_device(authed(&operator_token, add("no spaces", "default"))).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    let bad = ops.add_device(authed(&operator_token, add("d2", "unserved"))).await.unwrap_err();
    assert_eq!(bad.code(), Code::NotFound, "{bad:?}");
    assert!(bad.message().contains("unserved"), "{bad:?}");
    let bad = ops.add_device(authed(&operator_token, add("d1", "default"))).await.unwrap_err();
    assert_eq!(bad.code(), Code::AlreadyExists, "{bad:?}");
    let bad = ops.revoke_device(authed(&operator_token, DeviceRef { device_id: "nobody".into() })).await.unwrap_err();
    assert_eq!(bad.code(), Code::NotFound, "{bad:?}");
    let listed = ops.list_devices(authed(&operator_token, ListDevicesRequest {})).await.unwrap().into_inner();
    assert_eq!(listed.devices.iter().map(|d| d.device_id.as_str()).collect::<Vec<_>>(), ["d1"]);

    // A device added while serving registers and uploads at once.
    let added = ops.add_device(authed(&operator_token, add("d2", "default"))).await.unwrap().into_inner();
    let d2_token = added.token;
    assert_eq!(added.device.unwrap().model_id, "default");
    let mut edge = client(&cloud).await;
    edge.register(authed(&d2_token, register("d2", &student))).await.unwrap();
    let (uploads, rx) = tokio::sync::mpsc::channel(4);
    let mut acks =
        edge.upload(authed(&d2_token, tokio_stream::wrappers::ReceiverStream::new(rx))).await.unwrap().into_inner();
    uploads.send(upload_request("d2", 1, 1, Some(1))).await.unwrap();
    assert_eq!(acks.message().await.unwrap().unwrap().seqs, [1, 2], "stored and acknowledged");
    let mut watch = watch_params(&mut edge, &d2_token, "d2").await;

    // Revoking ends both open streams with UNAUTHENTICATED; new calls are refused.
    let revoked =
        ops.revoke_device(authed(&operator_token, DeviceRef { device_id: "d2".into() })).await.unwrap().into_inner();
    assert!(revoked.revoked);
    let status = ends_with(&mut watch, Code::Unauthenticated).await;
    assert!(status.message().contains("revoked"), "{status:?}");
    ends_with(&mut acks, Code::Unauthenticated).await;
    let refused = edge.register(authed(&d2_token, register("d2", &student))).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let bad = ops.rotate_device(authed(&operator_token, DeviceRef { device_id: "d2".into() })).await.unwrap_err();
    assert_eq!(bad.code(), Code::FailedPrecondition, "a revoked device gets no new token: {bad:?}");

    // Rotating d1's token ends its open stream; the old token is refused, the new one works.
    edge.register(authed(&device_token, register("d1", &student))).await.unwrap();
    let mut d1_watch = watch_params(&mut edge, &device_token, "d1").await;
    let rotated =
        ops.rotate_device(authed(&operator_token, DeviceRef { device_id: "d1".into() })).await.unwrap().into_inner();
    assert_ne!(rotated.token, device_token);
    let status = ends_with(&mut d1_watch, Code::Unauthenticated).await;
    assert!(status.message().contains("replaced"), "{status:?}");
    let refused = edge.register(authed(&device_token, register("d1", &student))).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    edge.register(authed(&rotated.token, register("d1", &student))).await.unwrap();

    // Admin: health is open; /scopes needs the operator token.
    assert_eq!(http_get_with(cloud.admin, "/healthz", None).unwrap().0, 200);
    assert_eq!(http_get_with(cloud.admin, "/scopes", None).unwrap().0, 401);
    assert_eq!(http_get_with(cloud.admin, "/scopes", Some(&d2_token)).unwrap().0, 401);
    assert_eq!(http_get_with(cloud.admin, "/scopes", Some(&rotated.token)).unwrap().0, 401);
    let (status, body) = http_get_with(cloud.admin, "/scopes", Some(&operator_token)).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("device:d2"), "{body}");
    cloud.stop().unwrap();

    // The folder-side CLI sees what the running cloud did.
    let listed =
        std::process::Command::new(&bins.cloud).arg("--data-dir").arg(&data).args(["device", "list"]).output().unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.lines().any(|l| l.starts_with("d2 ") && l.contains("revoked")), "{listed}");
    assert!(listed.lines().any(|l| l.starts_with("d1 ") && l.contains("active")), "{listed}");
}

#[test]
fn the_cli_manages_devices_through_a_running_cloud() {
    let TinyCloud { dir, bins, data, cloud, .. } = tiny_cloud();
    let server = format!("http://{}", cloud.grpc);
    let cli = |args: &[&str]| {
        std::process::Command::new(&bins.cloud).arg("--data-dir").arg(&data).arg("device").args(args).output().unwrap()
    };
    let added = cli(&["--server", &server, "--plaintext", "add", "cam-7"]);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let token = String::from_utf8(added.stdout).unwrap();
    assert!(token.trim().starts_with("cam-7."), "only the token on stdout: {token}");
    let listed = cli(&["--server", &server, "--plaintext", "list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).lines().any(|l| l.starts_with("cam-7 ")));
    // Without --server the folder is locked by the running cloud: the error says what to do.
    let offline = cli(&["list"]);
    assert!(!offline.status.success());
    assert!(
        String::from_utf8_lossy(&offline.stderr).contains("--server"),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
    // A wrong operator token file is refused by the cloud.
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "0".repeat(64)).unwrap();
    let refused =
        cli(&["--server", &server, "--plaintext", "--operator-token-file", wrong.to_str().unwrap(), "revoke", "cam-7"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("operator token"));
    cloud.stop().unwrap();
}
