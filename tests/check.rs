//! `natter check`: one test per kind of bad configuration (each must exit non-zero naming the
//! flag or file), the good case (exit 0, one `ok` line), and a data dir held by a running server.
mod common;

use std::path::Path;
use std::process::ExitStatus;

use common::*;

/// What `natter check` exits with when something is wrong (main.rs's EXIT_FAILURE).
const EXIT_FAILURE: i32 = 2;

/// `natter check --listen 127.0.0.1:0 --data DIR/data --jwt-secret SECRET <extra...>`.
fn check(dir: &Path, extra: &[&str]) -> (ExitStatus, String, String) {
    let data = dir.join("data");
    let mut args = vec!["check", "--listen", "127.0.0.1:0", "--data", data.to_str().unwrap(), "--jwt-secret", SECRET];
    args.extend_from_slice(extra);
    run_natter(&args)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Fails with EXIT_FAILURE, prints nothing on stdout, and names every one of `needles` on stderr.
fn assert_refused(r: (ExitStatus, String, String), needles: &[&str]) {
    let (st, out, err) = r;
    assert_eq!(st.code(), Some(EXIT_FAILURE), "stdout {out:?} stderr {err:?}");
    assert!(out.is_empty(), "nothing on stdout when the check fails: {out:?}");
    for n in needles {
        assert!(err.contains(n), "stderr should name {n:?}: {err:?}");
    }
}

#[test]
fn good_configuration_prints_one_ok_line() {
    let dir = tempfile::tempdir().unwrap();
    let tls = generate_tls(dir.path());
    let (st, out, err) = check(dir.path(), &["--cert", p(&tls.cert_path), "--key", p(&tls.key_path)]);
    assert!(st.success(), "stderr {err:?}");
    assert_eq!(out.lines().count(), 1, "{out:?}");
    assert!(out.starts_with("ok: "), "{out:?}");
    assert!(out.contains("wss") && out.contains("cert.pem"), "{out:?}");
    assert!(dir.path().join("data").is_dir(), "the data dir is created, as serve would");
    // the data dir of a stopped server is fine, and plain ws too
    let (st, out, err) = check(dir.path(), &[]);
    assert!(st.success() && out.starts_with("ok: "), "stdout {out:?} stderr {err:?}");
}

#[test]
fn missing_cert_file() {
    let dir = tempfile::tempdir().unwrap();
    let tls = generate_tls(dir.path());
    let missing = dir.path().join("no-such-cert.pem");
    assert_refused(
        check(dir.path(), &["--cert", p(&missing), "--key", p(&tls.key_path)]),
        &["--cert", "no-such-cert.pem"],
    );
    assert_refused(check(dir.path(), &["--key", p(&tls.key_path)]), &["--cert"]);
}

#[test]
fn cert_and_key_that_do_not_match() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ta, tb) = (generate_tls(a.path()), generate_tls(b.path()));
    assert_refused(
        check(a.path(), &["--cert", p(&ta.cert_path), "--key", p(&tb.key_path)]),
        &["--cert/--key", p(&ta.cert_path), p(&tb.key_path)],
    );
}

#[test]
fn garbage_pem() {
    let dir = tempfile::tempdir().unwrap();
    let tls = generate_tls(dir.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n").unwrap();
    assert_refused(check(dir.path(), &["--cert", p(&garbage), "--key", p(&tls.key_path)]), &["--cert", "garbage.pem"]);
    std::fs::write(&garbage, "this is not a key\n").unwrap();
    assert_refused(check(dir.path(), &["--cert", p(&tls.cert_path), "--key", p(&garbage)]), &["--key", "garbage.pem"]);
}

#[test]
fn short_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let r = run_natter(&["check", "--listen", "127.0.0.1:0", "--data", p(&data), "--jwt-secret", "too-short"]);
    assert_refused(r, &["--jwt-secret", "32"]);
    let file = dir.path().join("secret");
    std::fs::write(&file, "short\n").unwrap();
    let r = run_natter(&["check", "--listen", "127.0.0.1:0", "--data", p(&data), "--jwt-secret-file", p(&file)]);
    assert_refused(r, &["--jwt-secret-file", p(&file)]);
}

#[test]
fn bad_flag_values() {
    let dir = tempfile::tempdir().unwrap();
    // refused by clap's parser
    assert_refused(check(dir.path(), &["--heartbeat", "soon"]), &["--heartbeat", "soon"]);
    assert_refused(check(dir.path(), &["--trusted-proxies", "10.0.0.1/8"]), &["--trusted-proxies"]);
    // refused by serve's own validation, shared with check
    assert_refused(check(dir.path(), &["--max-message-bytes", "0"]), &["--max-message-bytes"]);
    assert_refused(check(dir.path(), &["--allowed-origins", "example.com"]), &["--allowed-origins"]);
}

#[test]
fn unwritable_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    // Under a regular file: no one, root included, can create it.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let under = file.join("data");
    let r = run_natter(&["check", "--listen", "127.0.0.1:0", "--data", p(&under), "--jwt-secret", SECRET]);
    assert_refused(r, &["--data", p(&under)]);
    assert_refused(
        run_natter(&["check", "--listen", "127.0.0.1:0", "--data", p(&file), "--jwt-secret", SECRET]),
        &["--data", "not a directory"],
    );
}

#[test]
fn listen_address_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let data = dir.path().join("data");
    let r = run_natter(&["check", "--listen", &addr, "--data", p(&data), "--jwt-secret", SECRET]);
    assert_refused(r, &["--listen", &addr]);
    let r = check(dir.path(), &["--metrics-listen", &addr]);
    assert_refused(r, &["--metrics-listen", &addr]);
}

#[tokio::test]
async fn data_dir_of_a_running_server_is_in_use() {
    let mut s = Server::start(ServerOpts::new()).await;
    let r = run_natter(&["check", "--listen", "127.0.0.1:0", "--data", p(&s.data_dir), "--jwt-secret", SECRET]);
    assert_refused(r, &["--data", "in use"]);
    s.stop().await;
    let (st, out, err) =
        run_natter(&["check", "--listen", "127.0.0.1:0", "--data", p(&s.data_dir), "--jwt-secret", SECRET]);
    assert!(st.success() && out.starts_with("ok: "), "after a clean stop: stdout {out:?} stderr {err:?}");
}
