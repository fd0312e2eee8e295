//! One load-generator connection: TCP (from a chosen source address), TLS with rustls for
//! `wss://`, the HTTP upgrade, and a minimal client side of RFC 6455 (masked frames out,
//! server frames parsed from a buffer, so reads stay cancel-safe and cost no allocation).

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::{bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    pub tls: Option<(TlsConnector, rustls_pki_types::ServerName<'static>)>,
}

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Connect from `source` (a loopback address of its own gives another 28k ephemeral ports),
/// do TLS when asked, and upgrade. Bytes the server sent right after its 101 stay in the buffer.
pub async fn connect(target: &Target, source: Option<IpAddr>) -> anyhow::Result<(Stream, BytesMut)> {
    let socket = if target.addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).with_context(|| format!("bind source address {ip}"))?;
    }
    let tcp = socket.connect(target.addr).await.with_context(|| format!("connect {}", target.addr))?;
    tcp.set_nodelay(true)?;
    let mut stream = match &target.tls {
        Some((connector, name)) => Stream::Tls(Box::new(connector.connect(name.clone(), tcp).await.context("TLS")?)),
        None => Stream::Plain(tcp),
    };
    let key = base64(&rand::random::<[u8; 16]>());
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        target.path, target.host
    );
    stream.write_all(req.as_bytes()).await?;
    stream.flush().await?;
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            if !head.starts_with("HTTP/1.1 101") {
                bail!("upgrade refused: {}", head.lines().next().unwrap_or(""));
            }
            buf.advance(end + 4);
            return Ok((stream, buf));
        }
        if buf.len() > 16 * 1024 || stream.read_buf(&mut buf).await? == 0 {
            bail!("connection closed during the upgrade");
        }
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A server frame, borrowed from the read buffer until `consume`.
pub struct Frame {
    pub opcode: u8,
    pub fin: bool,
    /// Range of the payload in the buffer.
    pub start: usize,
    pub end: usize,
}

pub const OP_TEXT: u8 = 1;
pub const OP_CLOSE: u8 = 8;
pub const OP_PING: u8 = 9;

/// Parse the next complete frame at the start of `buf` (servers never mask).
pub fn parse(buf: &[u8]) -> anyhow::Result<Option<Frame>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    if buf[1] & 0x80 != 0 {
        bail!("server sent a masked frame");
    }
    let (len, head) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")) as usize, 10),
        126 | 127 => return Ok(None),
        n => (n as usize, 2),
    };
    if buf.len() < head + len {
        return Ok(None);
    }
    Ok(Some(Frame { opcode, fin, start: head, end: head + len }))
}

/// A masked client frame. The mask is random per frame, as RFC 6455 asks of clients.
pub fn encode(out: &mut BytesMut, opcode: u8, payload: &[u8]) {
    out.put_u8(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.put_u8(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            out.put_u8(0x80 | 126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(0x80 | 127);
            out.put_u64(n as u64);
        }
    }
    let mask: [u8; 4] = rand::random();
    out.put_slice(&mask);
    let start = out.len();
    out.put_slice(payload);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

pub fn text_frame(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + 14);
    encode(&mut b, OP_TEXT, payload);
    b.freeze()
}

/// A client-side rustls config: the system of trust the user chose (`--ca`, or none at all
/// with `--insecure`, for self-signed local servers).
pub fn tls_config(ca: Option<&std::path::Path>, insecure: bool) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let config = if insecure {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider))).with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let Some(ca) = ca else { bail!("wss:// needs --ca PEM (the server's CA) or --insecure") };
        use rustls_pki_types::pem::PemObject;
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("--ca: cannot read {}", ca.display()))?
        {
            roots.add(cert.with_context(|| format!("--ca: bad PEM in {}", ca.display()))?)?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// `--insecure`: accept any certificate (signatures are still checked, so TLS runs its full cost).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Base64 for upgrade keys (the bench's, and the raw reference's accept key): too small a need
/// for a crate.
pub fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            s.push(if i <= c.len() { T[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_key_is_base64() {
        assert_eq!(base64(b"the sample nonce"), "dGhlIHNhbXBsZSBub25jZQ==");
    }

    #[test]
    fn frames_round_trip_through_the_parser() {
        let mut b = BytesMut::new();
        b.put_slice(&[0x81, 5]);
        b.put_slice(b"hello");
        b.put_slice(&[0x81, 126, 0, 200]);
        b.put_slice(&[b'x'; 200]);
        let f = parse(&b).unwrap().unwrap();
        assert_eq!((f.opcode, f.fin, &b[f.start..f.end]), (OP_TEXT, true, &b"hello"[..]));
        b.advance(f.end);
        let f = parse(&b).unwrap().unwrap();
        assert_eq!(f.end - f.start, 200);
        assert!(parse(&b[..50]).unwrap().is_none());
    }
}
