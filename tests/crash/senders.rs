//! The crash oracle's senders: publish with cids (or plain chat), resend every unacked cid in
//! order after each reconnect, and now and then resend an acked one (it must not publish twice).

use super::epoch::{count_error, is_pong, next, Got};
use super::*;

/// A sender across runs: what it has not seen acked yet is resent, same cid, after every
/// reconnect (as the chat page does).
pub(crate) struct SenderState {
    pub(crate) uid: &'static str,
    pub(crate) rooms: &'static [&'static str],
    pub(crate) with_cid: bool,
    pub(crate) next: u64,
    /// Sent, not acked, in sending order.
    pub(crate) outstanding: Vec<String>,
    /// Recently acked, for deliberate duplicate sends.
    pub(crate) acked: Vec<String>,
    pub(crate) rng: Rng,
}

pub(crate) struct SenderConn {
    pub(crate) c: Client,
    pub(crate) view: ConnView,
    pub(crate) alive: bool,
    pub(crate) ponged: bool,
}

impl SenderConn {
    async fn step(&mut self, m: &Shared, st: &mut SenderState, dur: Duration) {
        let v = match next(&mut self.c, dur).await {
            Got::Event(v) => v,
            Got::Nothing => return,
            Got::Gone => {
                self.alive = false;
                return;
            }
        };
        match v["event"].as_str().unwrap_or("") {
            "message" => {
                self.view.message(&mut lock(m), &v);
            }
            "ack" => {
                lock(m).acked(&v, Instant::now());
                if let Some(cid) = v["cid"].as_str() {
                    if let Some(i) = st.outstanding.iter().position(|c| c == cid) {
                        st.outstanding.remove(i);
                        st.acked.push(cid.to_string());
                        if st.acked.len() > 50 {
                            st.acked.remove(0);
                        }
                    }
                }
            }
            "login" if v["uid"] == st.uid => self.view.joined(v["roomid"].as_str().unwrap_or("")),
            "error" => count_error(m, &v),
            _ if is_pong(&v) => self.ponged = true,
            _ => {}
        }
    }

    /// Sends `cid` (recorded first, so that its ack can never arrive unknown).
    async fn send(&mut self, m: &Shared, cid: &str, room: &str, text: &str) {
        lock(m).sent(cid, room, text, self.c.uid.as_deref().unwrap_or(""), Instant::now());
        if !self.c.try_send_json(&json!({"event":"message","roomid":room,"message":text,"cid":cid})).await {
            self.alive = false;
        }
    }

    /// Sends a cid sent before, with its room and text.
    async fn resend(&mut self, m: &Shared, cid: &str) {
        let (room, text) = {
            let g = lock(m);
            let r = &g.cids[cid];
            (r.room.clone(), r.text.clone())
        };
        self.send(m, cid, &room, &text).await;
    }
}

pub(crate) async fn sender_run(
    port: u16,
    m: Shared,
    mut st: SenderState,
    settled: oneshot::Sender<bool>,
    go: watch::Receiver<bool>,
    stop: CancellationToken,
) -> SenderState {
    let Ok(c) = Client::try_connect_port(port, st.uid).await else {
        let _ = settled.send(false);
        return st;
    };
    let mut s = SenderConn { c, view: ConnView::new(format!("sender {}", st.uid)), alive: true, ponged: false };
    for r in st.rooms {
        s.alive &= s.c.try_send_json(&json!({"event":"login","roomid":r})).await;
    }
    s.alive &= s.c.try_send_json(&json!({"event":"heartbeat","message":"ping"})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.alive && !s.ponged && Instant::now() < deadline {
        s.step(&m, &mut st, ms(100)).await;
    }
    // Resend everything unacked, in order, same cids.
    for cid in st.outstanding.clone() {
        if !s.alive {
            break;
        }
        s.resend(&m, &cid).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.alive && !st.outstanding.is_empty() && Instant::now() < deadline {
        s.step(&m, &mut st, ms(100)).await;
    }
    let _ = settled.send(s.alive && st.outstanding.is_empty());
    while s.alive && !stop.is_cancelled() && !*go.borrow() {
        s.step(&m, &mut st, ms(50)).await;
    }
    let mut next_send = Instant::now() + ms(st.rng.range(10, 150));
    while s.alive && !stop.is_cancelled() {
        let now = Instant::now();
        if now >= next_send && !st.with_cid {
            let text = format!("{} #{} in {CHATTY_ROOM}, no cid", st.uid, st.next);
            st.next += 1;
            lock(&m).stats.plain_sends += 1;
            s.alive &= s.c.try_send_json(&json!({"event":"message","roomid":CHATTY_ROOM,"message":text})).await;
            next_send = Instant::now() + ms(st.rng.range(20, 60));
        } else if now >= next_send {
            let dup = st.rng.chance(0.03) && !st.acked.is_empty();
            if dup {
                // A cid already acked: must get the same ack, and not be published again.
                let cid = st.rng.pick(&st.acked).clone();
                s.resend(&m, &cid).await;
            } else {
                // Now and then a burst, so that more is in flight when the kill comes.
                let n = if st.rng.chance(0.05) { st.rng.range(3, 8) } else { 1 };
                for _ in 0..n {
                    let room = *st.rng.pick(st.rooms);
                    let cid = format!("{}-{}", st.uid, st.next);
                    let text = format!("{} #{} in {room}", st.uid, st.next);
                    st.next += 1;
                    st.outstanding.push(cid.clone());
                    s.send(&m, &cid, room, &text).await;
                }
            }
            next_send = Instant::now() + ms(st.rng.range(40, 150));
        }
        let wait = next_send.saturating_duration_since(Instant::now()).max(ms(1));
        s.step(&m, &mut st, wait).await;
    }
    st
}
