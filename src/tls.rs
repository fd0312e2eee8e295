//! TLS: loading the operator's certificate and key (rustls, ring provider) and the `--dev`
//! self-signed localhost certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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

/// Reads and checks the PEM files; each error names the flag and the file.
pub fn server_config(files: &TlsFiles) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| anyhow::anyhow!("--cert: cannot read {}: {e}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("--cert: {} is not a valid PEM certificate chain: {e}", files.cert.display()))?;
    if certs.is_empty() {
        bail!("--cert: {} holds no PEM certificate", files.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| anyhow::anyhow!("--key: cannot read a PEM private key from {}: {e}", files.key.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            anyhow::anyhow!(
                "--cert/--key: {} and {} do not make a usable pair: {e}",
                files.cert.display(),
                files.key.display()
            )
        })?;
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
