//! Transport security of `cema.v1` connections, one policy for every client and the server:
//! TLS (rustls) by default, the server's certificate verified against a CA file or the
//! system's roots, client certificates for mutual TLS, and plaintext only when asked for
//! explicitly — an `http://` endpoint without it is refused, never silently accepted.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// What is wrong with a transport setting. Every variant names the file or endpoint.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A certificate or key file could not be read.
    #[error("reading the {what} {}: {source}", path.display())]
    Read {
        /// Which file (e.g. "CA certificate").
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file holds no PEM block of the expected kind.
    #[error("the {what} {} holds no PEM `{label}` block", path.display())]
    NotPem {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The PEM label looked for.
        label: &'static str,
    },
    /// The endpoint is not a URL tonic accepts.
    #[error("bad cloud endpoint `{endpoint}`: {reason}")]
    BadEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// An `http://` endpoint without plaintext asked for.
    #[error(
        "`{0}` is plaintext (no encryption, no server authentication): use https:// with the cloud's CA \
         certificate, or allow plaintext explicitly (--plaintext) on a network you trust"
    )]
    PlaintextRefused(String),
    /// Plaintext asked for, but the endpoint or the other settings want TLS.
    #[error("plaintext was asked for, but {0}: drop one of the two")]
    PlaintextConflict(String),
    /// The endpoint's scheme is neither `https` nor `http`.
    #[error("`{0}`: the cloud endpoint must start with https:// (or http:// with plaintext)")]
    Scheme(String),
    /// A client certificate without its key, or the reverse.
    #[error("a client certificate needs its key and a key its certificate (both files, or neither)")]
    HalfIdentity,
    /// tonic refused the TLS configuration.
    #[error("TLS configuration for `{endpoint}`: {reason}")]
    Tls {
        /// The endpoint.
        endpoint: String,
        /// tonic's message.
        reason: String,
    },
}

fn read_pem(what: &'static str, path: &Path, label: &'static str) -> Result<Vec<u8>, TransportError> {
    let bytes = std::fs::read(path).map_err(|source| TransportError::Read { what, path: path.to_owned(), source })?;
    // "PRIVATE KEY" also matches "EC PRIVATE KEY" and "RSA PRIVATE KEY" blocks.
    let text = String::from_utf8_lossy(&bytes);
    if !text.lines().any(|l| l.starts_with("-----BEGIN ") && l.contains(label)) {
        return Err(TransportError::NotPem { what, path: path.to_owned(), label });
    }
    Ok(bytes)
}

fn identity(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<Identity>, TransportError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(Identity::from_pem(
            read_pem("certificate", cert, "CERTIFICATE")?,
            read_pem("private key", key, "PRIVATE KEY")?,
        ))),
        (None, None) => Ok(None),
        _ => Err(TransportError::HalfIdentity),
    }
}

/// The files of a client's TLS setting (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// PEM CA certificate(s) the cloud's certificate must chain to (default: the system's roots).
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate, presented to a cloud that requires one (mutual TLS).
    pub client_cert: Option<PathBuf>,
    /// The client certificate's PEM private key.
    pub client_key: Option<PathBuf>,
    /// The name the cloud's certificate must carry (default: the endpoint's host).
    pub server_name: Option<String>,
}

impl ClientTlsFiles {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// How a client reaches the cloud: TLS with its configuration loaded, or plaintext.
#[derive(Debug, Clone)]
pub struct ClientTransport {
    tls: Option<ClientTlsConfig>,
}

impl Default for ClientTransport {
    /// TLS, the server verified against the system's roots.
    fn default() -> Self {
        Self { tls: Some(ClientTlsConfig::new().with_native_roots()) }
    }
}

impl ClientTransport {
    /// Plaintext: only `http://` endpoints, nothing encrypted or authenticated.
    pub fn plaintext() -> Self {
        Self { tls: None }
    }

    /// TLS with `files` read now (so a bad path fails at start, not at the first connect).
    pub fn tls(files: &ClientTlsFiles) -> Result<Self, TransportError> {
        let mut config = ClientTlsConfig::new();
        config = match &files.ca_cert {
            Some(path) => {
                config.ca_certificate(Certificate::from_pem(read_pem("CA certificate", path, "CERTIFICATE")?))
            }
            None => config.with_native_roots(),
        };
        if let Some(identity) = identity(files.client_cert.as_deref(), files.client_key.as_deref())? {
            config = config.identity(identity);
        }
        if let Some(name) = &files.server_name {
            config = config.domain_name(name.clone());
        }
        Ok(Self { tls: Some(config) })
    }

    /// What a command line asks for: `plaintext` (then no TLS file may be named) or TLS.
    pub fn from_options(plaintext: bool, files: &ClientTlsFiles) -> Result<Self, TransportError> {
        if plaintext {
            if !files.is_empty() {
                return Err(TransportError::PlaintextConflict("TLS files or a server name are given too".to_owned()));
            }
            return Ok(Self::plaintext());
        }
        Self::tls(files)
    }

    /// The endpoint for `url`, with TLS configured; refuses a scheme that does not match.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, TransportError> {
        let bad = |e: tonic::transport::Error| TransportError::BadEndpoint {
            endpoint: url.to_owned(),
            reason: e.to_string(),
        };
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match (scheme.as_deref(), &self.tls) {
            (Some("https"), Some(tls)) => Endpoint::from_shared(url.to_owned())
                .map_err(bad)?
                .tls_config(tls.clone())
                .map_err(|e| TransportError::Tls { endpoint: url.to_owned(), reason: e.to_string() }),
            (Some("http"), None) => Endpoint::from_shared(url.to_owned()).map_err(bad),
            (Some("http"), Some(_)) => Err(TransportError::PlaintextRefused(url.to_owned())),
            (Some("https"), None) => Err(TransportError::PlaintextConflict(format!("the endpoint `{url}` is https"))),
            _ => Err(TransportError::Scheme(url.to_owned())),
        }
    }
}

/// The server's TLS setting: its certificate and key, and optionally the CA that client
/// certificates must chain to (then every client must present one: mutual TLS).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsFiles {
    /// PEM certificate chain of the server (leaf first).
    pub cert: PathBuf,
    /// Its PEM private key.
    pub key: PathBuf,
    /// PEM CA certificate(s) for client certificates; set, a client without a valid one is
    /// refused during the handshake.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl ServerTlsFiles {
    /// Reads the files into tonic's server configuration.
    pub fn load(&self) -> Result<ServerTlsConfig, TransportError> {
        let identity = identity(Some(&self.cert), Some(&self.key))?.ok_or(TransportError::HalfIdentity)?;
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            config =
                config.client_ca_root(Certificate::from_pem(read_pem("client CA certificate", ca, "CERTIFICATE")?));
        }
        Ok(config)
    }

    /// Paths made relative to `base` (a config file's folder) where they are relative.
    pub fn relative_to(&mut self, base: &Path) {
        for path in [&mut self.cert, &mut self.key].into_iter().chain(self.client_ca.as_mut()) {
            *path = base.join(&*path);
        }
    }
}
