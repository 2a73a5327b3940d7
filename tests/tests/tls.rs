//! TLS on the gRPC port, through real `cema-cloud serve` processes with certificates from a
//! private CA made for the test (`cema_cloud::certs`, rcgen): a client that trusts the CA
//! registers; one that trusts another CA, expects another name or speaks plaintext is refused.
//! With client certificates required (mutual TLS) a client without one, or with one from
//! another CA, is refused, and a real `cema-edge run` streams over mutual TLS and applies the
//! cloud's updates. A cloud asked for neither TLS nor plaintext refuses to start; `cema-cloud
//! tls init` writes material (private keys 0600, never overwriting) that a cloud and its
//! clients use as they are.
#![allow(clippy::unwrap_used)] // a failing test should panic where it fails

mod support;

use std::path::{Path, PathBuf};

use cema_cloud::certs::{Authority, Issued};
use cema_proto::transport::{ClientTlsFiles, ClientTransport, TransportError};
use cema_proto::v1::cema_client::CemaClient;
use cema_sim::fleet::{self, CloudProcess, EdgeSpec};
use support::*;

/// Writes `issued` as `<name>.pem` and `<name>.key` into `dir`.
fn write(dir: &Path, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    (cert, key)
}

/// The cloud's CA with a server certificate for localhost and a client `cam`, and another CA
/// with a client `intruder`; every file in `dir`.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
    other_ca: PathBuf,
    other_client: (PathBuf, PathBuf),
}

fn pki(dir: &Path) -> Pki {
    std::fs::create_dir_all(dir).unwrap();
    let ca = Authority::new("test CA").unwrap();
    let other = Authority::new("other CA").unwrap();
    Pki {
        ca: write(dir, "ca", &ca.ca).0,
        server: write(dir, "server", &ca.server(&["localhost".into(), "127.0.0.1".into()]).unwrap()),
        client: write(dir, "cam", &ca.client("cam").unwrap()),
        other_ca: write(dir, "other-ca", &other.ca).0,
        other_client: write(dir, "intruder", &other.client("intruder").unwrap()),
    }
}

fn tls_section(pki: &Pki, mutual: bool) -> String {
    let mut section = format!("[tls]\ncert = {:?}\nkey = {:?}\n", pki.server.0, pki.server.1);
    if mutual {
        section += &format!("client_ca = {:?}\n", pki.ca);
    }
    section
}

/// Registers `d1` at `url` over `transport`: Ok with the scope, or the failure as text.
async fn register_over(url: &str, transport: &ClientTransport, token: &str, student: &Path) -> Result<String, String> {
    let endpoint = transport.endpoint(url).map_err(|e| e.to_string())?;
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e}"))?;
    let reply = CemaClient::new(channel)
        .register(authed(token, register("d1", student)))
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    Ok(reply.into_inner().scope)
}

fn files(ca: &Path, client: Option<&(PathBuf, PathBuf)>) -> ClientTlsFiles {
    ClientTlsFiles {
        ca_cert: Some(ca.to_owned()),
        client_cert: client.map(|c| c.0.clone()),
        client_key: client.map(|c| c.1.clone()),
        server_name: None,
    }
}

struct TlsCloud {
    dir: tempfile::TempDir,
    student: PathBuf,
    pki: Pki,
    cloud: CloudProcess,
    token: PathBuf,
}

fn tls_cloud(mutual: bool) -> TlsCloud {
    let dir = tempfile::tempdir().unwrap();
    let (student, foundation) = tiny_models(dir.path());
    let pki = pki(&dir.path().join("tls"));
    let config = config(&student, &foundation, &tls_section(&pki, mutual));
    let (cloud, tokens) = cloud_with_devices(&binaries(), &dir.path().join("cloud"), &config, &["d1"]);
    assert!(cloud.tls);
    TlsCloud { dir, student, pki, token: tokens[0].clone(), cloud }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_verifies_the_clouds_certificate() {
    let TlsCloud { dir: _dir, student, pki, cloud, token } = tls_cloud(false);
    let (url, token) = (cloud.endpoint(), support::token(&token));
    assert!(url.starts_with("https://"), "{url}");

    let trusted = ClientTransport::tls(&files(&pki.ca, None)).unwrap();
    assert_eq!(register_over(&url, &trusted, &token, &student).await.unwrap(), "device:d1");

    let wrong_ca = ClientTransport::tls(&files(&pki.other_ca, None)).unwrap();
    let refused = register_over(&url, &wrong_ca, &token, &student).await.unwrap_err();
    eprintln!("another CA: {refused}");

    let wrong_name = ClientTransport::tls(&ClientTlsFiles {
        server_name: Some("cloud.elsewhere.example".into()),
        ..files(&pki.ca, None)
    })
    .unwrap();
    register_over(&url, &wrong_name, &token, &student).await.unwrap_err();

    // Plaintext against the TLS port gets no gRPC answer.
    let plain_url = format!("http://127.0.0.1:{}", cloud.grpc.port());
    register_over(&plain_url, &ClientTransport::plaintext(), &token, &student).await.unwrap_err();

    // A TLS transport refuses an http:// endpoint before any byte is sent.
    assert!(matches!(trusted.endpoint(&plain_url), Err(TransportError::PlaintextRefused(_))));
    assert!(matches!(ClientTransport::plaintext().endpoint(&url), Err(TransportError::PlaintextConflict(_))));
    cloud.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_ca() {
    let TlsCloud { dir, student, pki, cloud, token } = tls_cloud(true);
    let url = cloud.endpoint();
    let token_text = support::token(&token);

    let with_cert = ClientTransport::tls(&files(&pki.ca, Some(&pki.client))).unwrap();
    assert_eq!(register_over(&url, &with_cert, &token_text, &student).await.unwrap(), "device:d1");

    let without = ClientTransport::tls(&files(&pki.ca, None)).unwrap();
    let refused = register_over(&url, &without, &token_text, &student).await.unwrap_err();
    eprintln!("no client certificate: {refused}");

    let foreign = ClientTransport::tls(&files(&pki.ca, Some(&pki.other_client))).unwrap();
    let refused = register_over(&url, &foreign, &token_text, &student).await.unwrap_err();
    eprintln!("client certificate of another CA: {refused}");

    // Half an identity is a configuration error, found before connecting.
    let half = ClientTlsFiles { client_key: None, ..files(&pki.ca, Some(&pki.client)) };
    assert!(matches!(ClientTransport::tls(&half), Err(TransportError::HalfIdentity)));

    // A real agent over mutual TLS: uploads, acknowledgements and updates all pass.
    let spec = EdgeSpec {
        device: "d1".into(),
        token,
        data_dir: dir.path().join("edge"),
        output: dir.path().join("edge.jsonl"),
        args: [
            "--model",
            &student.display().to_string(),
            "--corruptions",
            "gaussian_noise",
            "--samples-per-segment",
            "256",
            "--preset",
            "upload-all",
            "--pacing",
            "lockstep",
            "--ca-cert",
            &pki.ca.display().to_string(),
            "--client-cert",
            &pki.client.0.display().to_string(),
            "--client-key",
            &pki.client.1.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    };
    let bins = binaries();
    let cloud_ref = &cloud;
    tokio::task::block_in_place(|| fleet::run_edges(&bins, cloud_ref, std::slice::from_ref(&spec), 1)).unwrap();
    let log = std::fs::read_to_string(spec.data_dir.with_extension("log")).unwrap();
    let summary = fleet::summary_line(&log, "cema-edge: device=").expect("the agent's closing line");
    assert_eq!(summary["uploaded"], "256", "{log}");
    assert_eq!(summary["outbox_left"], "0", "{log}");
    assert!(summary["updates_applied"].parse::<u64>().unwrap() > 0, "{log}");

    // An agent asked for plaintext and for TLS files at once refuses to start, touching nothing.
    let state = dir.path().join("refused-edge");
    let refused = std::process::Command::new(&bins.edge)
        .args(["run", "--cloud", &url, "--device-id", "d1", "--plaintext", "--token-file"])
        .arg(&spec.token)
        .arg("--model")
        .arg(&student)
        .arg("--data-dir")
        .arg(&state)
        .arg("--ca-cert")
        .arg(&pki.ca)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("plaintext was asked for"), "{stderr}");
    assert!(!state.exists());
    cloud.stop().unwrap();
}

#[test]
fn a_cloud_without_tls_or_explicit_plaintext_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (student, foundation) = tiny_models(dir.path());
    let bins = binaries();
    let serve = |config: &str| {
        let path = dir.path().join("cloud.toml");
        std::fs::write(&path, config).unwrap();
        std::process::Command::new(&bins.cloud)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["serve", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let neither = serve(&format!("grpc_addr = \"127.0.0.1:0\"\n{}", config(&student, &foundation, "")));
    assert!(!neither.status.success());
    let stderr = String::from_utf8_lossy(&neither.stderr);
    assert!(stderr.contains("[tls]") && stderr.contains("plaintext"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "a refused start writes no state");

    let pki = pki(&dir.path().join("tls"));
    let both = serve(&format!(
        "grpc_addr = \"127.0.0.1:0\"\nplaintext = true\n{}",
        config(&student, &foundation, &tls_section(&pki, false))
    ));
    assert!(!both.status.success());
    assert!(String::from_utf8_lossy(&both.stderr).contains("choose one"));

    let missing_key = serve(&format!(
        "grpc_addr = \"127.0.0.1:0\"\n{}",
        config(&student, &foundation, &format!("[tls]\ncert = {:?}\nkey = \"nowhere.key\"\n", pki.server.0))
    ));
    assert!(!missing_key.status.success());
    assert!(String::from_utf8_lossy(&missing_key.stderr).contains("nowhere.key"));
    assert!(!dir.path().join("data").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_init_writes_material_a_cloud_and_its_clients_use() {
    let dir = tempfile::tempdir().unwrap();
    let (student, foundation) = tiny_models(dir.path());
    let bins = binaries();
    let out = dir.path().join("tls");
    let init = |args: &[&str]| {
        std::process::Command::new(&bins.cloud).args(["tls", "init", "--out"]).arg(&out).args(args).output().unwrap()
    };
    let refused = init(&["--server-name", "localhost", "--client", "../escape"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("../escape"));
    assert!(!out.exists(), "a refused init writes nothing");

    let made = init(&["--server-name", "localhost", "--server-name", "127.0.0.1", "--client", "d1"]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let names = ["ca.pem", "ca.key", "server.pem", "server.key", "d1.pem", "d1.key"];
    for name in names {
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(out.join(name)).unwrap().permissions());
        let private = name.ends_with(".key");
        assert_eq!(mode & 0o077 == 0, private, "{name}: mode {mode:o}");
    }
    let before = std::fs::read(out.join("ca.key")).unwrap();
    let again = init(&["--server-name", "localhost"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    assert_eq!(std::fs::read(out.join("ca.key")).unwrap(), before, "never overwritten");

    // The written files serve mutual TLS.
    let tls = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
        out.join("server.pem"),
        out.join("server.key"),
        out.join("ca.pem")
    );
    let (cloud, tokens) =
        cloud_with_devices(&bins, &dir.path().join("cloud"), &config(&student, &foundation, &tls), &["d1"]);
    let client = (out.join("d1.pem"), out.join("d1.key"));
    let transport = ClientTransport::tls(&files(&out.join("ca.pem"), Some(&client))).unwrap();
    let scope = register_over(&cloud.endpoint(), &transport, &support::token(&tokens[0]), &student).await.unwrap();
    assert_eq!(scope, "device:d1");
    cloud.stop().unwrap();
}
