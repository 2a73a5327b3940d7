//! `cema-cloud serve`: configuration, and the gRPC and admin HTTP servers around the engine.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use cema_core::{Manifest, OnnxModel};
use cema_proto::MAX_MESSAGE_BYTES;
use cema_proto::transport::ServerTlsFiles;
use cema_proto::v1::cema_server::CemaServer;
use cema_proto::v1::operator_server::OperatorServer;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::engine::Engine;
use crate::metrics::{LiveView, Metrics};
use crate::model::ModelEntry;
use crate::operator::{OperatorService, OperatorToken};
use crate::registry::DeviceRegistry;
use crate::scope::ScopeKind;
use crate::service::CloudService;
use crate::store::Store;
use cema_compute::adapt::AdaptConfig;

/// The cloud's configuration file (TOML). Every key has a default; paths are relative to the
/// file's folder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// Admin HTTP listen address (`/metrics`, `/healthz`, `/readyz`, `/scopes`); loopback by
    /// default.
    pub admin_addr: SocketAddr,
    /// The operator token's file (default `<data dir>/operator.token`, written with a new
    /// token at the first start when missing).
    pub operator_token_file: Option<PathBuf>,
    /// TLS on the gRPC port (`[tls]`: `cert`, `key`, optional `client_ca` for mutual TLS).
    pub tls: Option<ServerTlsFiles>,
    /// Serve gRPC without TLS; must be set explicitly when there is no `[tls]` section.
    pub plaintext: bool,
    /// Engine threads (each adapts one scope at a time).
    pub engine_workers: usize,
    /// Scopes labelled in `/metrics`' per-scope families (the first ones in scope order); the
    /// rest are counted in `cema_cloud_scope_metrics_omitted`, so the label set stays bounded.
    pub scope_metrics_limit: usize,
    /// Served models by id.
    pub models: BTreeMap<String, ModelConfig>,
}

/// One served model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The edge model (ONNX; its manifest `<name>.toml` beside it).
    pub edge: PathBuf,
    /// The foundation model (ONNX + manifest), same classes.
    pub foundation: PathBuf,
    /// `device` (default) or `fleet`.
    #[serde(default)]
    pub scope: ScopeKind,
    /// Parameter versions kept per scope for rollback.
    #[serde(default = "default_keep_versions")]
    pub keep_versions: u64,
    /// Step hyperparameters (defaults: cema-spec's reference values).
    #[serde(default)]
    pub adapt: AdaptConfig,
}

/// Default of [`CloudConfig::scope_metrics_limit`]: a fleet of a few dozen devices is labelled
/// in full; a large one keeps Prometheus' series count flat.
pub const DEFAULT_SCOPE_METRICS_LIMIT: usize = 64;

fn default_keep_versions() -> u64 {
    20
}

impl ModelConfig {
    /// An edge model adapted from `foundation`, with the default scope, retention and steps.
    pub fn new(edge: impl Into<PathBuf>, foundation: impl Into<PathBuf>) -> Self {
        Self {
            edge: edge.into(),
            foundation: foundation.into(),
            scope: ScopeKind::Device,
            keep_versions: default_keep_versions(),
            adapt: AdaptConfig::default(),
        }
    }
}

impl Default for CloudConfig {
    fn default() -> Self {
        let models =
            BTreeMap::from([("default".to_owned(), ModelConfig::new("models/student.onnx", "models/foundation.onnx"))]);
        Self {
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], 50051)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 9090)),
            operator_token_file: None,
            tls: None,
            plaintext: false,
            engine_workers: 1,
            scope_metrics_limit: DEFAULT_SCOPE_METRICS_LIMIT,
            models,
        }
    }
}

impl CloudConfig {
    /// `models` served in plaintext on 127.0.0.1 with ports the system picks (tests,
    /// embedding), one engine worker.
    pub fn loopback(models: BTreeMap<String, ModelConfig>) -> Self {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            grpc_addr: any_port,
            admin_addr: any_port,
            operator_token_file: None,
            tls: None,
            plaintext: true,
            engine_workers: 1,
            scope_metrics_limit: DEFAULT_SCOPE_METRICS_LIMIT,
            models,
        }
    }

    /// The gRPC server with its TLS configured (plaintext only when asked for). Building the
    /// acceptor parses the key and chain, so a bad file fails the start before any state opens.
    pub fn grpc_server(&self) -> Result<tonic::transport::Server> {
        let builder = tonic::transport::Server::builder();
        match (&self.tls, self.plaintext) {
            (Some(_), true) => {
                bail!("the config has a [tls] section and asks for plaintext (`plaintext`, --plaintext): choose one")
            }
            (Some(files), false) => builder
                .tls_config(files.load()?)
                .with_context(|| format!("the TLS certificate {} or its key", files.cert.display())),
            (None, true) => Ok(builder),
            (None, false) => bail!(
                "gRPC needs TLS: add a [tls] section (cert, key, and client_ca for mutual TLS; `cema-cloud tls init` \
                 makes a private CA and certificates), or serve plaintext explicitly on a network you trust \
                 (`plaintext = true` or --plaintext)"
            ),
        }
    }

    /// Reads a config file; model paths become relative to its folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut config: CloudConfig =
            toml::from_str(&text).with_context(|| format!("parsing the cloud config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for model in config.models.values_mut() {
            model.edge = base.join(&model.edge);
            model.foundation = base.join(&model.foundation);
        }
        if let Some(tls) = &mut config.tls {
            tls.relative_to(base);
        }
        Ok(config)
    }

    /// Loads every model and checks it, reporting the first problem with its model id.
    pub fn model_entries(&self) -> Result<Vec<ModelEntry>> {
        if self.models.is_empty() {
            bail!("the config serves no model; add a [models.<id>] section");
        }
        self.models
            .iter()
            .map(|(id, m)| {
                let load = |path: &Path| -> Result<(OnnxModel, Manifest)> {
                    let model = OnnxModel::load(path).with_context(|| format!("model `{id}`: {}", path.display()))?;
                    let manifest = Manifest::load(Manifest::path_for(path))
                        .with_context(|| format!("model `{id}`: the manifest of {}", path.display()))?;
                    manifest.check_model(&model).with_context(|| format!("model `{id}`: {}", path.display()))?;
                    Ok((model, manifest))
                };
                let (edge, edge_manifest) = load(&m.edge)?;
                let (foundation, foundation_manifest) = load(&m.foundation)?;
                let problems = m.adapt.problems();
                if !problems.is_empty() {
                    bail!("model `{id}`: {}", problems.join("; "));
                }
                if edge_manifest.classes.names != foundation_manifest.classes.names {
                    bail!("model `{id}`: the edge and foundation manifests list different classes");
                }
                Ok(ModelEntry {
                    id: id.clone(),
                    fingerprint: edge.fingerprint(),
                    edge,
                    edge_manifest,
                    foundation,
                    foundation_manifest,
                    adapt: m.adapt.clone(),
                    scope: m.scope,
                    keep_versions: m.keep_versions.max(1),
                })
            })
            .collect()
    }
}

/// A cloud whose listeners are bound (so tests can bind port 0 and read the address).
pub struct Cloud {
    grpc: TcpListener,
    grpc_server: tonic::transport::Server,
    /// "TLS", "mutual TLS" or "plaintext", for the log.
    security: &'static str,
    admin: TcpListener,
    engine: Arc<Engine>,
    threads: Vec<std::thread::JoinHandle<()>>,
    service: CloudService,
    operator: OperatorService,
    operator_token: OperatorToken,
    registry: DeviceRegistry,
    metrics: Arc<Metrics>,
    db: sled::Db,
    shutdown: watch::Sender<bool>,
    ready: Arc<AtomicBool>,
    scope_metrics_limit: usize,
}

impl Cloud {
    /// Opens the state in `data_dir`, loads the models, starts the engine and binds both
    /// listeners.
    pub async fn start(config: &CloudConfig, data_dir: &Path) -> Result<Self> {
        let grpc_server = config.grpc_server()?;
        let security = match &config.tls {
            Some(files) if files.client_ca.is_some() => "mutual TLS",
            Some(_) => "TLS",
            None => "plaintext",
        };
        let models = config.model_entries()?;
        std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        let db = sled::open(data_dir.join("state")).with_context(|| {
            format!("opening the cloud state in {} (is another cema-cloud using it?)", data_dir.display())
        })?;
        let registry = DeviceRegistry::open(&db)?;
        let token_path = match &config.operator_token_file {
            Some(path) => path.clone(),
            None => OperatorToken::default_path(data_dir),
        };
        let operator_token = OperatorToken::load_or_create(&token_path)?;
        let store = Store::open(&db)?.with_wal(&data_dir.join("ingest.wal"))?;
        let metrics = Arc::new(Metrics::default());
        let (engine, threads) = Engine::start(store, models, config.engine_workers, Arc::clone(&metrics))?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (registry_changed, registry_changed_rx) = watch::channel(0u64);
        let service = CloudService::new(
            Arc::clone(&engine),
            registry.clone(),
            Arc::clone(&metrics),
            shutdown_rx,
            registry_changed_rx,
        );
        let operator = OperatorService::new(
            (db.clone(), data_dir),
            Arc::clone(&engine),
            registry.clone(),
            operator_token.clone(),
            Arc::clone(&metrics),
            Arc::new(registry_changed),
        );
        let grpc = TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("binding gRPC on {}", config.grpc_addr))?;
        let admin = TcpListener::bind(config.admin_addr)
            .await
            .with_context(|| format!("binding admin HTTP on {}", config.admin_addr))?;
        Ok(Self {
            grpc,
            grpc_server,
            security,
            admin,
            engine,
            threads,
            service,
            operator,
            operator_token,
            registry,
            metrics,
            db,
            shutdown,
            ready: Arc::new(AtomicBool::new(false)),
            scope_metrics_limit: config.scope_metrics_limit,
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The device registry (shares the service's database).
    pub fn registry(&self) -> DeviceRegistry {
        self.registry.clone()
    }

    /// The state store.
    pub fn store(&self) -> Store {
        self.engine.store().clone()
    }

    /// The metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Serves until `stop` resolves, then shuts down gracefully: refuses new work, ends
    /// streams, lets the engine finish its current round, flushes the state.
    pub async fn run(self, stop: impl std::future::Future<Output = ()> + Send + 'static) -> Result<()> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter.set_serving::<CemaServer<CloudService>>().await;
        let cema = CemaServer::new(self.service.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut grpc_stop = self.shutdown.subscribe();
        // Pings drop the streams of devices whose link died silently, so watchers do not pile up.
        let grpc = self
            .grpc_server
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
            .add_service(health_service)
            .add_service(cema)
            .add_service(OperatorServer::new(self.operator.clone()))
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.grpc), async move {
                let _ = grpc_stop.wait_for(|s| *s).await;
            });
        let admin = admin_router(
            Arc::clone(&self.engine),
            Arc::clone(&self.metrics),
            Arc::clone(&self.ready),
            self.operator_token.clone(),
            self.scope_metrics_limit,
        );
        let mut admin_stop = self.shutdown.subscribe();
        let admin = axum::serve(self.admin, admin).with_graceful_shutdown(async move {
            let _ = admin_stop.wait_for(|s| *s).await;
        });
        self.ready.store(true, Ordering::Release);
        tracing::info!(grpc = self.security, "serving");
        let shutdown = self.shutdown.clone();
        let ready = Arc::clone(&self.ready);
        tokio::spawn(async move {
            stop.await;
            tracing::info!("shutting down");
            ready.store(false, Ordering::Release);
            let _ = shutdown.send(true);
        });
        let (grpc, admin) = tokio::join!(grpc, admin);
        grpc.context("gRPC server")?;
        admin.context("admin server")?;
        self.engine.stop();
        let threads = self.threads;
        tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join())))
            .await
            .context("joining the engine")?;
        self.db.flush_async().await.context("flushing the state")?;
        tracing::info!("stopped");
        Ok(())
    }
}

fn admin_router(
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    operator_token: OperatorToken,
    scope_metrics_limit: usize,
) -> axum::Router {
    let store = engine.store().clone();
    let render: cema_host::admin::Render = Arc::new(move || {
        let (scopes, watchers) = engine.counts();
        let (per_scope, omitted) = engine.scope_gauges(scope_metrics_limit).unwrap_or_else(|e| {
            tracing::warn!(cause = %e, "reading the scopes for /metrics");
            (Vec::new(), 0)
        });
        metrics.render(&LiveView { scopes, watchers, per_scope, omitted })
    });
    cema_host::admin::router(render, ready).route(
        "/scopes",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let store = store.clone();
            let authorization = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            let allowed = operator_token.accepts(authorization);
            async move { if allowed { scopes_json(&store) } else { unauthorized() } }
        }),
    )
}

type JsonReply = (axum::http::StatusCode, [(axum::http::HeaderName, &'static str); 2], String);

/// 401 for an admin request without the operator token.
fn unauthorized() -> JsonReply {
    (
        axum::http::StatusCode::UNAUTHORIZED,
        [(axum::http::header::CONTENT_TYPE, "application/json"), (axum::http::header::WWW_AUTHENTICATE, "Bearer")],
        "{\"error\":\"this endpoint needs `Authorization: Bearer <operator token>` (the cloud's operator.token)\"}\n"
            .to_owned(),
    )
}

/// `GET /scopes` (operator token): every scope's version, steps, replay and queue sizes, and
/// per device the highest acknowledged seq — what an operator checks after a restart or an
/// outage.
fn scopes_json(store: &Store) -> JsonReply {
    let json =
        [(axum::http::header::CONTENT_TYPE, "application/json"), (axum::http::header::CACHE_CONTROL, "no-store")];
    match store.summaries().map_err(anyhow::Error::from).and_then(|s| Ok(serde_json::to_string_pretty(&s)?)) {
        Ok(body) => (axum::http::StatusCode::OK, json, body + "\n"),
        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, json, format!("{{\"error\":{:?}}}\n", e.to_string())),
    }
}
