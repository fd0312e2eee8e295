//! TLS: loading the operator's certificate and key (rustls, ring provider), the resolver that
//! lets SIGHUP swap them for new handshakes, and the `--dev` self-signed localhost certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The one crypto provider of the build (ring); passed explicitly so that a second provider
/// pulled in by some dependency can never make `ServerConfig::builder()` panic.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks the PEM files: the chain parses, the key parses, and the key is the one
/// the leaf certificate names (rustls compares the SubjectPublicKeyInfo). Each error names the
/// flag and the file.
pub fn certified_key(files: &TlsFiles) -> anyhow::Result<Arc<CertifiedKey>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| anyhow::anyhow!("--cert: cannot read {}: {e}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("--cert: {} is not a valid PEM certificate chain: {e}", files.cert.display()))?;
    if certs.is_empty() {
        bail!("--cert: {} holds no PEM certificate", files.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| anyhow::anyhow!("--key: cannot read a PEM private key from {}: {e}", files.key.display()))?;
    let ck = CertifiedKey::from_der(certs, key, &provider()).map_err(|e| {
        anyhow::anyhow!(
            "--cert/--key: {} and {} do not make a usable pair: {e}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    Ok(Arc::new(ck))
}

/// The certificate every new handshake gets. `reload` swaps it; handshakes already done keep
/// the one they got, so open connections are not touched.
#[derive(Debug)]
pub struct Certs {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certs {
    /// Loads the pair once (a bad pair is a startup error).
    pub fn load(files: &TlsFiles) -> anyhow::Result<Arc<Certs>> {
        let current = RwLock::new(certified_key(files)?);
        Ok(Arc::new(Certs { files: files.clone(), current }))
    }

    /// Reads the files again; a bad pair is refused and the one in use stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = certified_key(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// Reloads `certs` each time `reload` is notified (main turns SIGHUP into that), until
/// `shutdown`. Every outcome is logged: a refused pair names the flag and file and says that the
/// certificate in use stays.
pub async fn reload_on(
    certs: Arc<Certs>,
    reload: Arc<tokio::sync::Notify>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = reload.notified() => {}
            _ = shutdown.cancelled() => return,
        }
        match certs.reload() {
            Ok(()) => tracing::info!("reload: new handshakes get the certificate in {}", certs.files.cert.display()),
            Err(e) => tracing::error!("reload refused, the certificate in use stays: {e:#}"),
        }
    }
}

/// The server's TLS configuration, its certificate taken from `certs` at each handshake.
pub fn server_config(certs: Arc<Certs>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    // HTTP/1.1 only: WebSocket upgrades do not exist in h2 here.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// `--dev` without a certificate: reuse `DIR/cert.pem`+`key.pem`, or generate them for
/// localhost, 127.0.0.1 and ::1.
pub fn dev_certificate(dir: &Path) -> anyhow::Result<TlsFiles> {
    let files = TlsFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
    if files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("--dev: cannot create {}", dir.display()))?;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into(), "::1".into()])
        .context("--dev: generating a self-signed certificate")?;
    std::fs::write(&files.cert, ck.cert.pem()).with_context(|| format!("--dev: writing {}", files.cert.display()))?;
    std::fs::write(&files.key, ck.signing_key.serialize_pem())
        .with_context(|| format!("--dev: writing {}", files.key.display()))?;
    tracing::warn!("--dev: generated a self-signed certificate in {}", dir.display());
    Ok(files)
}
