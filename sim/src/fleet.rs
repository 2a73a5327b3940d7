//! Real processes on loopback: a `cema-cloud` and `cema-edge` agents, started from the
//! binaries built beside this one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Paths of the two binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `cema-cloud`.
    pub cloud: PathBuf,
    /// `cema-edge`.
    pub edge: PathBuf,
}

impl Binaries {
    /// Finds the binaries next to the running one (or one folder up, for test binaries in
    /// `target/<profile>/deps`).
    pub fn locate() -> Result<Self> {
        let exe = std::env::current_exe().context("locating this program")?;
        let mut candidates = Vec::new();
        if let Some(dir) = exe.parent() {
            candidates.push(dir.to_path_buf());
            if let Some(up) = dir.parent() {
                candidates.push(up.to_path_buf());
            }
        }
        for dir in &candidates {
            let (cloud, edge) = (dir.join("cema-cloud"), dir.join("cema-edge"));
            if cloud.is_file() && edge.is_file() {
                return Ok(Self { cloud, edge });
            }
        }
        bail!(
            "cema-cloud and cema-edge not found in {}; build them first (`cargo build --release --bins`)",
            candidates.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" or ")
        )
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; the caller binds it right after).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `GET path` over HTTP/1.0; returns the status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    http_get_with(addr, path, None)
}

/// The same with an `Authorization: Bearer <token>` header when `bearer` is given.
pub fn http_get_with(addr: SocketAddr, path: &str, bearer: Option<&str>) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let authorization = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{authorization}\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// A value from a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

/// The `key=value` pairs of the last line holding `marker`, from the marker on (the closing
/// line of `cema-edge run`, or of a benchmark).
pub fn summary_line(text: &str, marker: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let line = text.lines().rev().find_map(|l| l.find(marker).map(|at| &l[at..]))?;
    Some(
        line.split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    )
}

/// A running cloud.
pub struct CloudProcess {
    child: Child,
    /// gRPC address.
    pub grpc: SocketAddr,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    /// Whether gRPC is served with TLS (the config has a `[tls]` section).
    pub tls: bool,
    /// Its log file.
    pub log: PathBuf,
}

/// Registers a device (the cloud must not be running on `data_dir`); returns its token file.
pub fn add_device(bins: &Binaries, data_dir: &Path, device: &str, model: &str) -> Result<PathBuf> {
    let output = Command::new(&bins.cloud)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["device", "add", device, "--model", model])
        .output()
        .context("running cema-cloud device add")?;
    if !output.status.success() {
        bail!("cema-cloud device add {device}: {}", String::from_utf8_lossy(&output.stderr));
    }
    let token = data_dir.join(format!("{device}.token"));
    std::fs::write(&token, &output.stdout)?;
    Ok(token)
}

impl CloudProcess {
    /// Starts `cema-cloud serve` with `config` (TOML without addresses; they are added here,
    /// with `plaintext = true` unless `config` has a `[tls]` section) and waits until `/readyz`
    /// answers 200.
    pub fn start(bins: &Binaries, data_dir: &Path, config: &str) -> Result<Self> {
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let path = data_dir.join("cloud.toml");
        let plaintext = if has_tls_section(config) { "" } else { "plaintext = true\n" };
        std::fs::write(&path, format!("grpc_addr = \"{grpc}\"\nadmin_addr = \"{admin}\"\n{plaintext}{config}"))?;
        Self::start_with_config_file(bins, data_dir, &path, grpc, admin)
    }

    /// The gRPC endpoint: `https://localhost:<port>` with TLS (the name a test certificate
    /// carries), `http://127.0.0.1:<port>` without.
    pub fn endpoint(&self) -> String {
        if self.tls { format!("https://localhost:{}", self.grpc.port()) } else { format!("http://{}", self.grpc) }
    }

    /// Starts `cema-cloud serve` with a complete config file whose addresses are given.
    pub fn start_with_config_file(
        bins: &Binaries,
        data_dir: &Path,
        path: &Path,
        grpc: SocketAddr,
        admin: SocketAddr,
    ) -> Result<Self> {
        let log = data_dir.join("cloud.log");
        let tls =
            has_tls_section(&std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?);
        let child = Command::new(&bins.cloud)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("serve")
            .arg("--config")
            .arg(path)
            .env("CEMA_LOG", "warn,cema_cloud=info")
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&log)?)
            .spawn()
            .context("starting cema-cloud")?;
        let mut cloud = Self { child, grpc, admin, tls, log };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = cloud.child.try_wait()? {
                bail!("cema-cloud exited ({status}): {}", tail(&cloud.log));
            }
            if matches!(http_get(admin, "/readyz"), Ok((200, _))) {
                return Ok(cloud);
            }
            if Instant::now() > deadline {
                bail!("cema-cloud did not become ready: {}", tail(&cloud.log));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The cloud's `/metrics` text.
    pub fn metrics(&self) -> Result<String> {
        Ok(http_get(self.admin, "/metrics")?.1)
    }

    /// SIGTERM and wait (graceful shutdown).
    pub fn stop(mut self) -> Result<()> {
        signal(self.child.id(), "TERM")?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("cema-cloud exited with {status}: {}", tail(&self.log));
        }
        Ok(())
    }

    /// SIGKILL (a crash).
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for CloudProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn has_tls_section(config: &str) -> bool {
    config.lines().any(|l| l.trim() == "[tls]")
}

/// Sends a signal with `kill(1)`.
pub fn signal(pid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status()?;
    if !status.success() {
        bail!("kill -{name} {pid} failed");
    }
    Ok(())
}

/// The last lines of a log file.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// One edge run.
#[derive(Debug, Clone)]
pub struct EdgeSpec {
    /// Device id.
    pub device: String,
    /// Its token file.
    pub token: PathBuf,
    /// Agent state folder.
    pub data_dir: PathBuf,
    /// JSON-lines output.
    pub output: PathBuf,
    /// Further `cema-edge run` flags (model, scenario, preset, pacing…).
    pub args: Vec<String>,
}

/// Starts `cema-edge run` against a cloud: plaintext when the cloud serves it, else TLS with
/// the certificate flags the spec's `args` carry.
pub fn spawn_edge(bins: &Binaries, cloud: &CloudProcess, spec: &EdgeSpec) -> Result<Child> {
    std::fs::create_dir_all(&spec.data_dir)?;
    let log = std::fs::File::create(spec.data_dir.with_extension("log"))?;
    Command::new(&bins.edge)
        .arg("run")
        .arg("--cloud")
        .arg(cloud.endpoint())
        .args(if cloud.tls { None } else { Some("--plaintext") })
        .arg("--device-id")
        .arg(&spec.device)
        .arg("--token-file")
        .arg(&spec.token)
        .arg("--data-dir")
        .arg(spec.data_dir.join("state"))
        .arg("--output")
        .arg(&spec.output)
        .args(&spec.args)
        .env("CEMA_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting cema-edge")
}

/// Runs edges, at most `parallel` at a time; fails with the log of the first that fails.
pub fn run_edges(bins: &Binaries, cloud: &CloudProcess, specs: &[EdgeSpec], parallel: usize) -> Result<()> {
    let mut queue: std::collections::VecDeque<&EdgeSpec> = specs.iter().collect();
    let mut running: Vec<(Child, &EdgeSpec)> = Vec::new();
    while !queue.is_empty() || !running.is_empty() {
        while running.len() < parallel.max(1) {
            let Some(spec) = queue.pop_front() else { break };
            running.push((spawn_edge(bins, cloud, spec)?, spec));
        }
        let mut still = Vec::new();
        for (mut child, spec) in running {
            match child.try_wait()? {
                Some(status) if !status.success() => {
                    bail!("edge {} failed ({status}): {}", spec.device, tail(&spec.data_dir.with_extension("log")))
                }
                Some(_) => {}
                None => still.push((child, spec)),
            }
        }
        running = still;
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
