//! One server run of the crash oracle: witness, senders' reconnect and resend, probes, load,
//! the kill; and the small event helpers the actors share.

use super::*;

/// Runs clients against the (just started) server until `phase`'s kill; in the final run, no
/// load and no kill: every member logs in once more and reads its catch-up to the end.
/// Returns what the kill was, for the progress line.
pub(crate) async fn run_epoch(
    server: &mut Server,
    m: &Shared,
    phase: Phase,
    mut rng: Rng,
    senders: &mut Vec<SenderState>,
    final_run: bool,
) -> String {
    lock(m).epoch += 1;
    let port = server.port;
    let stop = CancellationToken::new();

    let (wready_tx, wready_rx) = oneshot::channel();
    let witness = tokio::spawn(witness_run(port, m.clone(), wready_tx, stop.clone()));
    if !matches!(tokio::time::timeout(Duration::from_secs(10), wready_rx).await, Ok(Ok(()))) {
        lock(m).stats.notes.push("witness did not log in: this run is judged without it".into());
    }

    let (go_tx, go_rx) = watch::channel(false);
    let mut sender_tasks = vec![];
    let mut settled = vec![];
    for mut st in senders.drain(..) {
        st.rng = rng.fork();
        let (tx, rx) = oneshot::channel();
        settled.push(rx);
        sender_tasks.push(tokio::spawn(sender_run(port, m.clone(), st, tx, go_rx.clone(), stop.clone())));
    }
    let mut member_tasks = vec![];
    let what;
    if phase == Phase::Reconnect {
        let d = rng.range(0, 150);
        tokio::time::sleep(ms(d)).await;
        what = format!("killed {d} ms into the reconnect wave");
    } else {
        let mut all_settled = true;
        for rx in settled {
            all_settled &= matches!(tokio::time::timeout(Duration::from_secs(20), rx).await, Ok(Ok(true)));
        }
        if all_settled {
            for room in ROOMS {
                probe_room(port, m, room, &mut rng).await;
            }
        } else {
            lock(m).stats.notes.push("senders did not settle: no probes in this run".into());
        }
        let (drain_tx, mut drain_rx) = mpsc::unbounded_channel();
        if !final_run {
            let _ = go_tx.send(true);
        }
        for (uid, rooms, by_since) in MEMBERS {
            let spec = MemberSpec { uid, rooms, by_since };
            let r = rng.fork();
            member_tasks.push(tokio::spawn(member_run(
                port,
                m.clone(),
                spec,
                r,
                drain_tx.clone(),
                stop.clone(),
                final_run,
            )));
        }
        drop(drain_tx);
        if final_run {
            for t in member_tasks.drain(..) {
                if tokio::time::timeout(Duration::from_secs(60), t).await.is_err() {
                    lock(m).stats.notes.push("a final member drain did not finish within 60 s".into());
                }
            }
            what = "final run".into();
        } else if phase == Phase::Drain {
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut who = None;
            while let Ok(Some((uid, offline))) = tokio::time::timeout_at(deadline.into(), drain_rx.recv()).await {
                if offline >= ms(250) {
                    who = Some((uid, offline));
                    break;
                }
            }
            let d = rng.range(0, 25);
            tokio::time::sleep(ms(d)).await;
            what = match who {
                Some((uid, off)) => {
                    format!("killed {d} ms after {uid} (offline {:.2} s) sent its login", off.as_secs_f64())
                }
                None => "killed under load (no drain came within 3 s)".into(),
            };
        } else {
            let d = rng.range(300, 2000);
            tokio::time::sleep(ms(d)).await;
            what = format!("killed {d} ms into the load");
        }
    }

    server.kill();
    stop.cancel();
    if !final_run {
        let name = if what.contains("no drain came") { Phase::Load.name() } else { phase.name() };
        record_kill(m, name);
    }
    for t in sender_tasks {
        match tokio::time::timeout(Duration::from_secs(20), t).await {
            Ok(Ok(st)) => senders.push(st),
            other => panic!("a sender task did not end within 20 s of the kill: {:?}", other.err()),
        }
    }
    for t in member_tasks {
        if tokio::time::timeout(Duration::from_secs(20), t).await.is_err() {
            panic!("a member task did not end within 20 s of the kill");
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(20), witness).await;
    what
}

/// What a connection's next frame was, reduced to what the actors act on.
pub(crate) enum Got {
    Event(Value),
    Nothing,
    Gone,
}

pub(crate) async fn next(c: &mut Client, dur: Duration) -> Got {
    match c.recv(dur).await {
        Incoming::Json(v) => Got::Event(v),
        Incoming::Timeout => Got::Nothing,
        Incoming::Close(..) | Incoming::Eof(_) => Got::Gone,
        Incoming::Text(_) | Incoming::Binary(_) => Got::Nothing,
    }
}

pub(crate) fn is_pong(v: &Value) -> bool {
    v["event"] == "heartbeat" && v["message"] == "pong"
}

pub(crate) fn count_error(m: &Shared, v: &Value) {
    let code = v["code"].as_str().unwrap_or("?").to_string();
    *lock(m).stats.errors.entry(code).or_insert(0) += 1;
}
