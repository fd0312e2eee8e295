//! Storage faults: a data dir that cannot be used at start stops natter with a message naming
//! `--data` (never a panic), and a disk that fills up under load makes writes fail with
//! `unavailable` while reads go on, nothing acked unless stored, and recovery by itself once
//! space returns. The disk is a small tmpfs (root only; skipped otherwise).

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `natter serve` on `data` that is expected to stop at startup: (exit code, stderr). Panics
/// if it is still running after 10 s (it started although it should not have).
fn serve_expecting_failure(data: &Path) -> (Option<i32>, String) {
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(natter_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--jwt-secret", SECRET, "--data"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(err.reopen().unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("natter started on {}:\n{}", data.display(), std::fs::read_to_string(err.path()).unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code(), std::fs::read_to_string(err.path()).unwrap())
}

fn assert_refused(data: &Path, why: &str) -> String {
    let (code, stderr) = serve_expecting_failure(data);
    assert_eq!(code, Some(2), "{why}: exit code\n{stderr}");
    assert!(stderr.contains("--data"), "{why}: the message names --data:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{why}: no panic:\n{stderr}");
    stderr
}

/// A store with a few messages, written by a real server and stopped cleanly twice (so sled
/// has written its snapshot file too).
async fn make_store(data: &Path) {
    for round in 0..2 {
        let mut s = Server::start(ServerOpts::new().data_dir(data)).await;
        let mut a = Client::connect_as(&s, "u1", None).await;
        a.login("r").await;
        a.say_cid("r", &format!("round {round}"), &format!("c{round}")).await;
        a.recv_event("ack").await;
        drop(a);
        s.stop().await;
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).status();
        assert!(st.is_ok_and(|s| s.success()), "mount tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }
    fn remount(&self, opts: &str) {
        let st = Command::new("mount").args(["-o", &format!("remount,{opts}")]).arg(&self.0).status().unwrap();
        assert!(st.success(), "remount {opts}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn an_unusable_data_dir_stops_natter_naming_data() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    assert_refused(&file, "a file");
    assert_refused(&file.join("below"), "below a file");

    // Damaged stores, each made afresh.
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 4] = [
        ("db cut short", |d| {
            // A small store lives in the first bytes of the first segment.
            std::fs::OpenOptions::new().write(true).open(d.join("db")).unwrap().set_len(16).unwrap();
        }),
        ("db replaced by noise", |d| {
            let len = std::fs::metadata(d.join("db")).unwrap().len() as usize;
            let noise: Vec<u8> = (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0]).collect();
            std::fs::write(d.join("db"), noise).unwrap();
        }),
        ("conf garbled", |d| {
            std::fs::write(d.join("conf"), b"segment_size: many\nuse_compression: perhaps\n").unwrap()
        }),
        ("db emptied and its snapshot removed", |d| {
            std::fs::write(d.join("db"), b"").unwrap();
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.file_name().unwrap().to_string_lossy().starts_with("snap.") {
                    std::fs::remove_file(p).unwrap();
                }
            }
        }),
    ];
    for (i, (why, damage)) in damages.iter().enumerate() {
        let data = tmp.path().join(format!("store{i}"));
        make_store(&data).await;
        damage(&data);
        let stderr = assert_refused(&data, why);
        eprintln!("{why}: {}", stderr.lines().last().unwrap_or(""));
    }
}

#[tokio::test]
async fn a_read_only_data_dir_stops_natter_naming_data() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&tmp.path().join("mnt"), "32m");
    let data = fs.0.join("data");
    make_store(&data).await;
    fs.remount("ro");
    assert_refused(&data, "a read-only store");
    assert_refused(&fs.0.join("new"), "a new store on a read-only disk");
}

/// Sends one message and waits for its answer: `Ok(id)` for an ack, `Err(code)` for an error.
async fn publish(c: &mut Client, text: &str, cid: &str) -> Result<u64, String> {
    c.say_cid("r", text, cid).await;
    loop {
        let v: Value = c.recv_json().await;
        match v["event"].as_str() {
            Some("ack") if v["cid"] == cid => return Ok(v["id"].as_u64().unwrap()),
            Some("error") => return Err(v["code"].as_str().unwrap_or("").to_string()),
            _ => {}
        }
    }
}

/// Fills the filesystem at `dir` with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    path
}

#[tokio::test]
async fn a_full_disk_refuses_writes_keeps_reads_and_recovers_by_itself() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&tmp.path().join("mnt"), "48m");
    let opts = ServerOpts::new().data_dir(fs.0.join("data")).arg("--rate-per-sec", 1000).arg("--rate-burst", 1000);
    let mut s = Server::start(opts).await;
    let mut a = Client::connect_as(&s, "u1", None).await;
    a.login("r").await;
    let mut acked: Vec<(u64, String)> = Vec::new();
    let mut unacked: Vec<String> = Vec::new();
    for i in 0..5 {
        let id = publish(&mut a, &format!("before {i}"), &format!("b{i}")).await.expect("disk has room");
        acked.push((id, format!("b{i}")));
    }

    let filler = fill(&fs.0);
    let mut refused = 0;
    for i in 0..20 {
        let cid = format!("f{i}");
        match publish(&mut a, &format!("full {i}"), &cid).await {
            Ok(id) => acked.push((id, cid)),
            Err(code) => {
                assert_eq!(code, "unavailable", "a refused write says unavailable");
                refused += 1;
                unacked.push(cid);
            }
        }
    }
    assert!(refused >= 15, "writes fail while the disk is full ({refused} of 20 refused)");
    // The server is up and still answers a second connection of the member: with the replay,
    // or, when sled cannot read back a page whose write failed (it happens now and then), with
    // a clear error telling it to log in again; never silence.
    assert_eq!(healthz(&s).await["status"], "ok");
    let mut reader = Client::connect_as(&s, "u1", None).await;
    reader.login_since("r", 0).await;
    let first = reader.recv_json().await;
    match first["event"].as_str() {
        Some("message") => assert_eq!(first["id"], acked[0].0, "{first}"),
        Some("error") => assert!(first["message"].as_str().unwrap().contains("log in again"), "{first}"),
        _ => panic!("after login: {first}"),
    }

    std::fs::remove_file(&filler).unwrap();
    // Recovers by itself: the sender resends its unacked messages (same cids) until acked.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !unacked.is_empty() {
        assert!(Instant::now() < deadline, "no recovery within 20 s:\n{}", s.stderr());
        let cid = unacked[0].clone();
        match publish(&mut a, &format!("resent {cid}"), &cid).await {
            Ok(id) => {
                acked.push((id, cid));
                unacked.remove(0);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
    assert!(s.stderr().contains("writes are accepted again"), "{}", s.stderr());

    // Everything acked survives a crash, once each.
    s.kill();
    s.restart().await;
    let mut c = Client::connect_as(&s, "u9", None).await;
    c.login_since("r", 0).await;
    let mut got: Vec<u64> = Vec::new();
    while let Some(v) = c.try_recv_json(Duration::from_millis(800)).await {
        if v["event"] == "message" {
            got.push(v["id"].as_u64().unwrap());
        }
    }
    let mut want: Vec<u64> = acked.iter().map(|(id, _)| *id).collect();
    want.sort();
    want.dedup();
    for id in &want {
        assert_eq!(got.iter().filter(|g| *g == id).count(), 1, "acked message {id} is stored once: {got:?}");
    }
}
