//! SIGHUP reloads the certificate and key: new TLS handshakes get the new pair while an open
//! WebSocket keeps chatting; a bad pair (garbage, or a key of another certificate) is refused
//! with a log line and the pair in use stays.
mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

/// The leaf (first) certificate of a PEM chain, DER.
fn leaf_der(cert_pem: &Path) -> Vec<u8> {
    let first = CertificateDer::pem_file_iter(cert_pem).unwrap().next().expect("a certificate").unwrap();
    first.to_vec()
}

/// A fresh TLS handshake trusting `ca_der`: the leaf certificate the server presented, or the
/// handshake error (a client trusting only the new CA fails while the old pair is served).
async fn peer_leaf(s: &Server, ca_der: &[u8]) -> Result<Vec<u8>, String> {
    let tcp = tokio::net::TcpStream::connect(s.addr()).await.map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(tls_client_config(ca_der));
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(RECV_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timeout".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(tls.get_ref().1.peer_certificates().expect("a peer certificate")[0].to_vec())
}

fn sighup(s: &Server) {
    // SAFETY: kill(2) on the pid of our own child.
    assert_eq!(unsafe { libc::kill(s.pid() as i32, libc::SIGHUP) }, 0, "kill -HUP");
}

/// The open WebSocket pair still exchanges messages.
async fn still_chatting(a: &mut Client, b: &mut Client, text: &str) {
    a.say("r1", text).await;
    for c in [a, b] {
        let m = c.recv_json().await;
        assert_eq!(m["message"], text, "{m}");
    }
}

#[tokio::test]
async fn sighup_reloads_the_pair_for_new_handshakes_and_refuses_a_bad_one() {
    let s = Server::start(ServerOpts::new().tls()).await;
    let a = s.tls.as_ref().unwrap();
    let leaf_a = leaf_der(&a.cert_path);
    assert_eq!(peer_leaf(&s, &a.ca_der).await.unwrap(), leaf_a);
    let (mut x, mut y) = two_in_room(&s, "r1").await;
    still_chatting(&mut x, &mut y, "before").await;

    // Renewal: pair B (another CA, another key) written over the same paths, then SIGHUP.
    let other = tempfile::tempdir().unwrap();
    let b = generate_tls(other.path());
    let leaf_b = leaf_der(&b.cert_path);
    std::fs::copy(&b.cert_path, &a.cert_path).unwrap();
    std::fs::copy(&b.key_path, &a.key_path).unwrap();
    sighup(&s);
    wait_for(Duration::from_secs(10), "a new handshake to present certificate B", || async {
        peer_leaf(&s, &b.ca_der).await.ok().as_ref() == Some(&leaf_b)
    })
    .await;
    assert!(s.stderr().contains("reload: new handshakes get the certificate"), "{}", s.stderr());
    still_chatting(&mut x, &mut y, "after the reload").await;

    // Garbage on SIGHUP: refused with a log line naming the file, B stays.
    std::fs::write(&a.cert_path, "not a certificate\n").unwrap();
    sighup(&s);
    wait_for(Duration::from_secs(10), "the refused reload in the log", || async {
        s.stderr().contains("reload refused")
    })
    .await;
    let log = s.stderr();
    let refused = log.lines().find(|l| l.contains("reload refused")).unwrap();
    assert!(refused.contains("--cert") && refused.contains(a.cert_path.to_str().unwrap()), "{refused}");
    assert_eq!(peer_leaf(&s, &b.ca_der).await.unwrap(), leaf_b, "after garbage, B stays");

    // A certificate with another certificate's key: refused too, B stays.
    std::fs::copy(&b.cert_path, &a.cert_path).unwrap();
    let third = tempfile::tempdir().unwrap();
    std::fs::copy(generate_tls(third.path()).key_path, &a.key_path).unwrap();
    sighup(&s);
    wait_for(Duration::from_secs(10), "the second refused reload", || async {
        s.stderr().matches("reload refused").count() == 2
    })
    .await;
    assert_eq!(peer_leaf(&s, &b.ca_der).await.unwrap(), leaf_b, "after a mismatched pair, B stays");
    still_chatting(&mut x, &mut y, "after the refused reloads").await;
}

#[tokio::test]
async fn sighup_without_tls_is_logged_and_harmless() {
    let s = Server::start(ServerOpts::new()).await;
    let (mut x, mut y) = two_in_room(&s, "r1").await;
    sighup(&s);
    wait_for(Duration::from_secs(10), "the reload line", || async { s.stderr().contains("nothing to reload") }).await;
    still_chatting(&mut x, &mut y, "still here").await;
}
