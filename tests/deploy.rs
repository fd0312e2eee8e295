//! deploy.sh end to end: a real OpenSSH server on a loopback port (throwaway host key, an
//! authorized key for root) is the host; natter is deployed into a prefix in a temp dir with
//! `--service-manager none` (systemd is not PID 1 here) and checked over HTTPS: first deploy,
//! an idempotent second run, a dry run, a broken binary rolled back, and a renewed certificate
//! picked up on SIGHUP while an open WebSocket stays connected. The generated unit goes through
//! `systemd-analyze verify` (and `security --offline`) when systemd-analyze is installed.
//! Skipped, with the reason printed, when not root or when sshd, ssh or curl are missing.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// deploy.sh's exit status when the host cannot run the binary.
const EXIT_REFUSED: i32 = 3;
/// deploy.sh's exit status when the new version did not come up and the old one runs again.
const EXIT_ROLLED_BACK: i32 = 4;
/// deploy.sh's exit status when natter refused the new certificate on reload.
const EXIT_NOT_RELOADED: i32 = 6;
/// How long one deploy.sh run may take before the test kills it.
const DEPLOY_LIMIT: Duration = Duration::from_secs(180);
const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn on_path(tool: &str) -> bool {
    tool.starts_with('/') && Path::new(tool).exists()
        || std::env::var("PATH").unwrap_or_default().split(':').any(|d| Path::new(d).join(tool).exists())
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (deploy.sh creates a system user and chowns files)".into());
    }
    ["/usr/sbin/sshd", "ssh", "ssh-keygen", "curl", "setpriv", "setsid", "useradd"]
        .iter()
        .find(|t| !on_path(t))
        .map(|t| format!("{t} is missing (apt-get install openssh-server openssh-client curl)"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn run(cmd: &mut Command) {
    let st = cmd.stdout(Stdio::null()).status().expect("run");
    assert!(st.success(), "{cmd:?}: {st}");
}

/// The host: sshd on a loopback port, the prefix natter is deployed into; on drop the deployed
/// natter is stopped and sshd killed.
struct Host {
    dir: tempfile::TempDir,
    sshd: Child,
    ssh_port: u16,
    natter_port: u16,
}

impl Host {
    async fn start() -> Host {
        let dir = tempfile::Builder::new().prefix("natter-deploy-test-").tempdir().unwrap();
        // The natter user must reach the binary and files under the prefix.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let d = dir.path();
        for k in ["host_key", "id"] {
            run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(d.join(k)));
        }
        std::fs::copy(d.join("id.pub"), d.join("authorized_keys")).unwrap();
        let ssh_port = free_port();
        let config = format!(
            "Port {ssh_port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes no\nPidFile {d}/sshd.pid\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap(); // sshd's privilege separation directory
        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        let sshd = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sshd");
        let host = Host { dir, sshd, ssh_port, natter_port: free_port() };
        wait_for(Duration::from_secs(10), "sshd to listen", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", ssh_port)).await.is_ok()
        })
        .await;
        host
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn prefix(&self) -> PathBuf {
        self.path("root")
    }

    fn installed(&self, p: &str) -> PathBuf {
        self.prefix().join(p)
    }

    fn ssh_logins(&self) -> usize {
        std::fs::read_to_string(self.path("sshd.log")).unwrap_or_default().matches("Accepted publickey").count()
    }

    /// `deploy.sh root@127.0.0.1 ... extra`: (exit code, stdout, stderr, seconds). Every run
    /// must use exactly one ssh connection.
    fn deploy(&self, binary: &str, tls: &TlsFiles, health_secs: u32, extra: &[&str]) -> (i32, String, String, f64) {
        let logins = self.ssh_logins();
        let (port, natter) = (self.ssh_port.to_string(), format!("127.0.0.1:{}", self.natter_port));
        let known = format!("UserKnownHostsFile={}", self.path("known_hosts").display());
        let mut cmd = Command::new(Path::new(REPO).join("deploy.sh"));
        cmd.args(["root@127.0.0.1", "--ssh-port", &port, "--identity"])
            .arg(self.path("id"))
            .args(["--ssh-option", &known, "--ssh-option", "StrictHostKeyChecking=accept-new"])
            .args(["--listen", &natter, "--service-manager", "none", "--binary", binary, "--prefix"])
            .arg(self.prefix())
            .arg("--cert")
            .arg(&tls.cert_path)
            .arg("--key")
            .arg(&tls.key_path)
            .arg("--ca")
            .arg(&tls.ca_path)
            .args(extra)
            .env("NATTER_DEPLOY_HEALTH_SECS", health_secs.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().expect("run deploy.sh");
        let drain = |mut r: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = r.read_to_string(&mut s);
                s
            })
        };
        let out = drain(Box::new(child.stdout.take().unwrap()));
        let err = drain(Box::new(child.stderr.take().unwrap()));
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if started.elapsed() > DEPLOY_LIMIT {
                let _ = child.kill();
                panic!("deploy.sh took over {DEPLOY_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let (out, err) = (out.join().unwrap(), err.join().unwrap());
        println!("--- deploy.sh {extra:?} ({:.1} s, {status})\n{out}{err}", started.elapsed().as_secs_f64());
        assert_eq!(self.ssh_logins() - logins, 1, "one ssh connection per run");
        (status.code().unwrap_or(-1), out, err, started.elapsed().as_secs_f64())
    }

    /// A fresh TLS handshake trusting `ca_der`, then GET /healthz: (status line, leaf DER).
    async fn healthz(&self, ca_der: &[u8]) -> (String, Vec<u8>) {
        let mut tls = self.tls(ca_der).await;
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut resp = String::new();
        let _ = tokio::time::timeout(RECV_TIMEOUT, tls.read_to_string(&mut resp)).await.expect("healthz timeout");
        (resp.lines().next().unwrap_or("").to_string(), leaf)
    }

    async fn tls(&self, ca_der: &[u8]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.natter_port)).await.expect("connect natter");
        let connector = tokio_rustls::TlsConnector::from(tls_client_config(ca_der));
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.expect("TLS handshake")
    }

    fn sha(&self, p: &str) -> String {
        let out = Command::new("sha256sum").arg(self.installed(p)).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split(' ').next().unwrap().to_string()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let ctl = self.installed("usr/local/lib/natter/natterctl");
        if ctl.exists() {
            let _ = Command::new(ctl).arg("stop").stdout(Stdio::null()).status();
        }
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
    }
}

fn leaf_der(cert_pem: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_file_iter(cert_pem).unwrap().next().unwrap().unwrap().to_vec()
}

/// The next text frame that is an event `event` (heartbeats and others skipped).
async fn next_event<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, event: &str) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let m = tokio::time::timeout(RECV_TIMEOUT, ws.next()).await.expect("ws timeout").expect("ws eof").unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["event"] == event {
                return v;
            }
        }
    }
}

/// The generated unit through systemd-analyze, when it is installed: verify must pass; the
/// offline security score is printed (it needs no running systemd).
fn analyze_unit(host: &Host) {
    if !on_path("systemd-analyze") {
        println!("systemd-analyze not installed: unit not verified");
        return;
    }
    let unit =
        Command::new(Path::new(REPO).join("deploy.sh")).arg("--print-unit").arg("--prefix").arg(host.prefix()).output();
    let unit = unit.unwrap();
    assert!(unit.status.success());
    let path = host.path("natter.service");
    std::fs::write(&path, &unit.stdout).unwrap();
    let v = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    assert!(
        v.status.success() && v.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&v.stderr)
    );
    let s = Command::new("systemd-analyze").args(["security", "--offline=true"]).arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&s.stdout);
    match text.lines().find(|l| l.contains("Overall exposure level")) {
        Some(l) => println!("systemd-analyze security: {}", l.trim_start_matches(['→', ' '])),
        None => println!("systemd-analyze security gave no score: {}", String::from_utf8_lossy(&s.stderr)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_over_ssh_idempotent_rollback_and_renewal() {
    if let Some(why) = skip_reason() {
        println!("skipped: {why}");
        return;
    }
    let host = Host::start().await;
    let (a, b) = (host.path("a"), host.path("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let (tls_a, tls_b) = (generate_tls(&a), generate_tls(&b));
    let bin = natter_bin();

    // First deploy: healthy over HTTPS with the deployed certificate.
    let (code, _, _, secs) = host.deploy(bin, &tls_a, 30, &[]);
    assert_eq!(code, 0);
    println!("first deploy to the test host: {secs:.1} s");
    analyze_unit(&host); // its ExecStart names the binary just installed
    let (status, leaf) = host.healthz(&tls_a.ca_der).await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(leaf, leaf_der(&tls_a.cert_path));
    let secret_meta = std::fs::metadata(host.installed("etc/natter/jwt-secret")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&secret_meta.permissions()) & 0o777, 0o600);
    let secret = std::fs::read_to_string(host.installed("etc/natter/jwt-secret")).unwrap();
    let pid = std::fs::read_to_string(host.installed("run/natter/natter.pid")).unwrap();

    // Second run, nothing changed: nothing written, nothing restarted, the secret kept.
    let (code, out, _, secs) = host.deploy(bin, &tls_a, 30, &[]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing changed") && !out.contains("installing"), "{out}");
    println!("idempotent second run: {secs:.1} s");
    assert_eq!(std::fs::read_to_string(host.installed("run/natter/natter.pid")).unwrap(), pid, "not restarted");
    assert_eq!(std::fs::read_to_string(host.installed("etc/natter/jwt-secret")).unwrap(), secret);

    // A dry run with another certificate prints the upload and writes nothing.
    let cert_sha = host.sha("etc/natter/tls/fullchain.pem");
    let (code, out, _, _) = host.deploy(bin, &tls_b, 30, &["--dry-run"]);
    assert_eq!(code, 0);
    assert!(out.contains("[dry-run] upload:") && out.contains("fullchain.pem"), "{out}");
    assert!(out.contains("[dry-run] read: ") && out.contains("sha256sum"), "reads are listed too: {out}");
    assert_eq!(host.sha("etc/natter/tls/fullchain.pem"), cert_sha, "a dry run writes nothing");

    // A binary for another architecture (an ELF header saying aarch64): refused before any write.
    let mut elf = std::fs::read(bin).unwrap()[..64].to_vec();
    elf[18..20].copy_from_slice(&183u16.to_le_bytes());
    let foreign = host.path("aarch64-natter");
    std::fs::write(&foreign, elf).unwrap();
    let (code, out, err, _) = host.deploy(foreign.to_str().unwrap(), &tls_b, 30, &[]);
    assert_eq!(code, EXIT_REFUSED, "{err}");
    assert!(err.contains("ELF machine 183") && err.contains("x86_64"), "{err}");
    assert!(!out.contains("installing"), "{out}");
    assert_eq!(host.sha("etc/natter/tls/fullchain.pem"), cert_sha, "nothing written");

    // A broken binary: rolled back, non-zero exit, the log tail shown, healthy again.
    let bin_sha = host.sha("usr/local/bin/natter");
    let broken = host.path("broken-natter");
    std::fs::write(&broken, "#!/bin/sh\necho 'broken natter' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (code, _, err, _) = host.deploy(broken.to_str().unwrap(), &tls_a, 10, &[]);
    assert_eq!(code, EXIT_ROLLED_BACK, "{err}");
    assert!(err.contains("broken natter"), "the supervisor log tail is printed: {err}");
    assert!(err.contains("rolled back"), "{err}");
    assert_eq!(host.sha("usr/local/bin/natter"), bin_sha, "the previous binary is back");
    assert!(host.installed("usr/local/bin/natter.failed").exists());
    assert!(host.healthz(&tls_a.ca_der).await.0.contains("200"));

    // Renewal: an open WebSocket, then a deploy with certificate B: reload (SIGHUP), not restart.
    let tls = host.tls(&tls_a.ca_der).await;
    let url = format!("wss://localhost:{}/ws", host.natter_port);
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.expect("wss upgrade");
    let tok = token_claims(secret.trim(), &json!({"sub": "u1", "rooms": ["*"], "exp": now_secs() + 3600}));
    ws.send(Message::text(json!({"event": "auth", "message": tok}).to_string())).await.unwrap();
    ws.send(Message::text(json!({"event": "login", "roomid": "r1"}).to_string())).await.unwrap();
    next_event(&mut ws, "login").await;
    let pid = std::fs::read_to_string(host.installed("run/natter/natter.pid")).unwrap();
    let (code, out, _, _) = host.deploy(bin, &tls_b, 30, &[]);
    assert_eq!(code, 0);
    assert!(out.contains("reloading"), "{out}");
    assert_eq!(
        std::fs::read_to_string(host.installed("run/natter/natter.pid")).unwrap(),
        pid,
        "reloaded, not restarted"
    );
    let (status, leaf) = host.healthz(&tls_b.ca_der).await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(leaf, leaf_der(&tls_b.cert_path), "new handshakes get certificate B");

    // A pair that does not match (certificate A, key B): natter refuses it on reload and keeps
    // B; deploy.sh sees B still served, puts the files in use back and fails.
    let mismatched = TlsFiles {
        cert_path: tls_a.cert_path.clone(),
        key_path: tls_b.key_path.clone(),
        ca_path: tls_b.ca_path.clone(),
        ca_der: tls_b.ca_der.clone(),
    };
    let installed_b = host.sha("etc/natter/tls/fullchain.pem");
    let (code, _, err, _) = host.deploy(bin, &mismatched, 10, &[]);
    assert_eq!(code, EXIT_NOT_RELOADED, "{err}");
    assert!(err.contains("reload refused"), "natter's log line is shown: {err}");
    assert_eq!(host.sha("etc/natter/tls/fullchain.pem"), installed_b, "the files in use are back");
    assert_eq!(host.healthz(&tls_b.ca_der).await.1, leaf_der(&tls_b.cert_path), "B still served");

    ws.send(Message::text(json!({"event": "message", "roomid": "r1", "message": "still here"}).to_string()))
        .await
        .unwrap();
    assert_eq!(next_event(&mut ws, "message").await["message"], "still here", "the open WebSocket stays up");
}
