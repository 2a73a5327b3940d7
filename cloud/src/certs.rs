//! `cema-cloud tls init`: a private certificate authority and the certificates it signs, for
//! deployments without a public CA (the compose fleet, a lab, the tests). ECDSA P-256 keys,
//! ten years of validity, server certificates for TLS server authentication only and client
//! certificates for client authentication only.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// Years a generated certificate is valid for.
const VALID_YEARS: i32 = 10;

/// What went wrong making or writing certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// rcgen refused the parameters (e.g. a name that is not a DNS name or an IP address).
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A name that cannot become a file name.
    #[error(
        "`{0}` cannot name a client certificate: use 1–64 characters from A–Z, a–z, 0–9, `.`, `_`, `-`, \
         not starting with `.`, and not `ca` or `server`"
    )]
    BadName(String),
    /// The folder already holds one of the files.
    #[error("{} exists: `tls init` never overwrites; remove it or choose another --out", .0.display())]
    Exists(PathBuf),
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its PKCS#8 private key.
    pub key_pem: String,
}

/// A private CA held in memory.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's own certificate and key.
    pub ca: Issued,
}

fn validity(params: &mut CertificateParams) {
    let year = 1970 + (SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) / 31_556_952) as i32;
    // From the start of last year, so a device whose clock lags a little still accepts it.
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + VALID_YEARS, 1, 1);
}

impl Authority {
    /// A new CA named `common_name`.
    pub fn new(common_name: &str) -> Result<Self, CertsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params);
        let cert_pem = params.self_signed(&key)?.pem();
        let ca = Issued { cert_pem, key_pem: key.serialize_pem() };
        Ok(Self { issuer: Issuer::new(params, key), ca })
    }

    fn sign(&self, mut params: CertificateParams, purpose: ExtendedKeyUsagePurpose) -> Result<Issued, CertsError> {
        let key = KeyPair::generate()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![purpose];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params);
        let cert_pem = params.signed_by(&key, &self.issuer)?.pem();
        Ok(Issued { cert_pem, key_pem: key.serialize_pem() })
    }

    /// A server certificate valid for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[String]) -> Result<Issued, CertsError> {
        let mut params = CertificateParams::new(names.to_vec())?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, first.as_str());
        }
        self.sign(params, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate with common name `name`.
    pub fn client(&self, name: &str) -> Result<Issued, CertsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        self.sign(params, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

fn check_client_name(name: &str) -> Result<(), CertsError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let ok = (1..=64).contains(&name.len())
        && name.chars().all(allowed)
        && !name.starts_with('.')
        && !matches!(name, "ca" | "server");
    if ok { Ok(()) } else { Err(CertsError::BadName(name.to_owned())) }
}

fn write_new(path: &Path, text: &str, private: bool) -> Result<(), CertsError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let write = |e| CertsError::Write { path: path.to_owned(), source: e };
    let mut file = options.open(path).map_err(write)?;
    file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(write)
}

/// Writes a new CA, a server certificate for `server_names` and one client certificate per
/// name in `clients` into `out`; returns the files written. Every name is checked and no
/// file may exist before anything is written.
pub fn init(out: &Path, server_names: &[String], clients: &[String]) -> Result<Vec<PathBuf>, CertsError> {
    clients.iter().try_for_each(|c| check_client_name(c))?;
    let authority = Authority::new("CEMA private CA")?;
    let mut files =
        vec![("ca".to_owned(), authority.ca.clone()), ("server".to_owned(), authority.server(server_names)?)];
    for client in clients {
        files.push((client.clone(), authority.client(client)?));
    }
    let paths: Vec<(PathBuf, PathBuf)> =
        files.iter().map(|(name, _)| (out.join(format!("{name}.pem")), out.join(format!("{name}.key")))).collect();
    if let Some(existing) = paths.iter().flat_map(|(c, k)| [c, k]).find(|p| p.exists()) {
        return Err(CertsError::Exists(existing.clone()));
    }
    std::fs::create_dir_all(out).map_err(|e| CertsError::Write { path: out.to_owned(), source: e })?;
    let mut written = Vec::new();
    for ((_, issued), (cert, key)) in files.iter().zip(paths) {
        write_new(&cert, &issued.cert_pem, false)?;
        write_new(&key, &issued.key_pem, true)?;
        written.extend([cert, key]);
    }
    Ok(written)
}
