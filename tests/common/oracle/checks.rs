//! The crash oracle's checks: at a quiet moment (the probes), on a login with `since` under
//! load, and at the end of the run (offline delivery, `recovered:false`, dedupe).

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use serde_json::Value;

use super::*;

impl Model {
    // -----------------------------------------------------------------------------------------
    // Checks at a quiet moment (every sent cid acked, nothing being published)
    // -----------------------------------------------------------------------------------------

    /// A fresh uid logged in with `since` at a quiet moment, when the store holds exactly the
    /// acked messages: the replay must be exactly the last N of them with id > since, and
    /// `recovered` must say whether every acked message with id > since is among those N.
    pub fn check_probe(&mut self, room: &str, since: u64, replay: &[u64], recovered: Option<&Value>) {
        self.stats.probes += 1;
        let n = self.history_max;
        let acked: Vec<u64> = self.acked_in(room).into_iter().map(|(id, _)| id).collect();
        let window: Vec<u64> = acked[acked.len().saturating_sub(n)..].to_vec();
        let want: Vec<u64> = window.iter().copied().filter(|id| *id > since).collect();
        if replay != want.as_slice() {
            let got: BTreeSet<u64> = replay.iter().copied().collect();
            let wanted: BTreeSet<u64> = want.iter().copied().collect();
            let missing: Vec<u64> = wanted.difference(&got).copied().collect();
            let extra: Vec<u64> = got.difference(&wanted).copied().collect();
            let mut d = format!(
                "room {room}, since {since}: replay of {} messages, expected the last {} acked with id > since ({} acked in all, N = {n})",
                replay.len(),
                want.len(),
                acked.len()
            );
            if !missing.is_empty() {
                let _ =
                    write!(d, "; missing acked ids {} (first: {})", short(&missing), self.cycle_of(room, missing[0]));
            }
            if !extra.is_empty() {
                let older = extra.iter().filter(|id| window.first().is_some_and(|w| *id < w)).count();
                let _ = write!(d, "; not in the last N: {} ({older} older than the window)", short(&extra));
            }
            if missing.is_empty() && extra.is_empty() {
                d.push_str("; same ids, wrong order");
            }
            self.violate(Check::HistoryByCount, d);
        }
        let after = acked.iter().filter(|id| **id > since).count();
        let expect = after <= n;
        match recovered_flag(recovered) {
            Err(d) => {
                self.stats.recovered_missing += 1;
                self.violate(Check::RecoveredField, format!("probe of room {room}, since {since}: {d}"));
            }
            Ok(got) => {
                if got {
                    self.stats.probe_true += 1;
                } else {
                    self.stats.probe_false += 1;
                }
                if got != expect {
                    let check = if got { Check::RecoveredTrue } else { Check::RecoveredFalse };
                    let d = format!(
                        "probe of room {room}, since {since}: recovered:{got}, but {after} acked (= stored) messages have id > since, N = {n}"
                    );
                    self.violate(check, d);
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Checks on a login with `since` under load
    // -----------------------------------------------------------------------------------------

    /// The `recovered` flag of a member's login with `since`, judged once its catch-up has been
    /// read completely (`catch_up`: ids received as replay or offline). The one place that
    /// knows the field: true must mean every message acked before the login with id > since
    /// came in the catch-up; false is judged at the end ([`Model::check_recovered_false`]).
    #[allow(clippy::too_many_arguments)]
    pub fn check_recovered_flag(
        &mut self,
        who: &str,
        room: &str,
        since: u64,
        own_login: &Value,
        sent_at: Instant,
        own_at: Instant,
        catch_up: &BTreeSet<u64>,
    ) {
        self.stats.since_logins += 1;
        match recovered_flag(own_login.get("recovered")) {
            Err(d) => {
                self.stats.recovered_missing += 1;
                self.violate(
                    Check::RecoveredField,
                    format!("{who} login to {room} with since {since}: {d}: {own_login}"),
                );
            }
            Ok(true) => {
                self.stats.load_true += 1;
                let missed: Vec<u64> = self
                    .cids
                    .values()
                    .filter(|r| r.room == room)
                    .filter_map(|r| r.ack.as_ref())
                    .filter(|a| a.at < sent_at && a.id > since && !catch_up.contains(&a.id))
                    .map(|a| a.id)
                    .collect::<BTreeSet<u64>>()
                    .into_iter()
                    .collect();
                if !missed.is_empty() {
                    let d = format!(
                        "{who} login to {room} with since {since}: recovered:true, but acked ids {} (acked before the login) came neither in the replay nor the queue (first: {})",
                        short(&missed),
                        self.cycle_of(room, missed[0])
                    );
                    self.violate(Check::RecoveredTrue, d);
                }
            }
            Ok(false) => {
                self.stats.load_false += 1;
                let cycle = self.cycle;
                self.false_logins.push(SinceLogin { who: who.into(), room: room.into(), since, own_at, cycle });
            }
        }
    }

    /// Every `recovered:false`: more than N messages can have been stored after `since`. Each
    /// cid holds at most one stored message at a time, so the number of cids sent to the room
    /// before the login, less those known to have an id at or below `since`, bounds it.
    pub fn check_recovered_false(&mut self) {
        let n = self.history_max;
        let logins = std::mem::take(&mut self.false_logins);
        for l in &logins {
            let bound = self
                .cids
                .values()
                .filter(|r| r.room == l.room && r.sends.first().is_some_and(|(_, t)| *t < l.own_at))
                .filter(|r| r.ack.as_ref().is_none_or(|a| a.id > l.since))
                .count();
            if bound <= n {
                let d = format!(
                    "{} login to {} with since {}: recovered:false, but at most {bound} messages can have been stored after since (N = {n})",
                    l.who, l.room, l.since
                );
                self.violate_at(Check::RecoveredFalse, l.cycle, d);
            }
        }
        self.false_logins = logins;
    }

    // -----------------------------------------------------------------------------------------
    // Checks at the end of the run
    // -----------------------------------------------------------------------------------------

    /// Presence of `uid` in `room` at each message the witness saw, and at the end of each
    /// server run's witnessed prefix (Unknown when a login of the uid was not witnessed).
    fn presence_walk(&self, uid: &str, room: &str) -> (HashMap<u64, Presence>, HashMap<usize, Presence>) {
        let rec = &self.members[&(uid.to_string(), room.to_string())];
        let mut labels = HashMap::new();
        let mut tails = HashMap::new();
        let mut state = Presence::NonMember;
        // Whether the membership at the last crash was flushed (or began in an earlier run).
        let mut durable = true;
        let empty = vec![];
        for e in 1..=self.epoch {
            // A restart: nobody is online; a membership not yet flushed may be gone.
            state = match state {
                Presence::Online | Presence::Offline if durable => Presence::Offline,
                Presence::Online | Presence::Offline => Presence::Unknown,
                s => s,
            };
            // When a membership (possibly) began in this run, at the witnessed login.
            let mut fresh: Option<Instant> = None;
            let events = self.witness.get(&(e, room.to_string())).unwrap_or(&empty);
            let mut logins = 0;
            for ev in events {
                match ev {
                    WEv::Msg(id) => {
                        labels.insert(*id, state);
                    }
                    WEv::Login { uid: u, at } if u == uid => {
                        logins += 1;
                        if matches!(state, Presence::NonMember | Presence::Unknown) {
                            fresh = Some(*at);
                        }
                        state = Presence::Online;
                    }
                    WEv::Logout { uid: u, left } if u == uid => {
                        if *left {
                            state = Presence::NonMember;
                            fresh = None;
                        } else {
                            state = Presence::Offline;
                        }
                    }
                    _ => {}
                }
            }
            if rec.logins_sent.get(&e).copied().unwrap_or(0) > logins {
                state = Presence::Unknown;
            }
            tails.insert(e, state);
            // An ack answering a send made after the join means a flush covering the join.
            durable = match fresh {
                None => true,
                Some(at) => self.ack_triggers.get(&e).is_some_and(|t| *t > at),
            };
        }
        (labels, tails)
    }

    /// Every member whose last login was read to its end got every acked message that was
    /// published while it was an offline member: by the witness's order when the witness saw
    /// the message, else when the member was an offline member at the end of every run the
    /// message may have been published in.
    pub fn check_offline_delivery(&mut self) {
        let keys: Vec<(String, String)> = self.members.keys().cloned().collect();
        let mut found = vec![];
        for (uid, room) in keys {
            let rec = &self.members[&(uid.clone(), room.clone())];
            if !rec.final_drain_done {
                self.stats.notes.push(format!("{uid} in {room}: final drain not completed, delivery not judged"));
                continue;
            }
            let (labels, tails) = self.presence_walk(&uid, &room);
            for r in self.cids.values().filter(|r| r.room == room) {
                let Some(a) = &r.ack else { continue };
                let (required, how) = match labels.get(&a.id) {
                    Some(p) => (*p == Presence::Offline, "the witness saw it published while the member was offline"),
                    None => {
                        let runs: BTreeSet<usize> = r.sends.iter().map(|(e, _)| *e).collect();
                        let all = !runs.is_empty() && runs.iter().all(|e| tails.get(e) == Some(&Presence::Offline));
                        (all, "published after the witness's last event, the member offline to the end of that run")
                    }
                };
                if !required {
                    continue;
                }
                self.stats.required_offline += 1;
                if !rec.received.contains(&a.id) {
                    let d = format!(
                        "{uid} ({}) never received acked id {} in {room} ({:?}, cid {} first sent in cycle {}, acked in cycle {}): {how}",
                        if rec.by_since { "logs in with since" } else { "logs in without since" },
                        a.id,
                        r.text,
                        r.text.split(' ').next().unwrap_or(""),
                        r.first_cycle,
                        a.cycle
                    );
                    found.push((a.cycle, d));
                }
            }
        }
        found.sort();
        for (cycle, d) in found {
            self.violate_at(Check::OfflineDelivery, cycle, d);
        }
    }

    /// A cid acked with id A is never published again: no id above A carries its text.
    pub fn check_dedupe(&mut self) {
        let mut found = vec![];
        for (cid, r) in &self.cids {
            let Some(a) = &r.ack else { continue };
            if let Some(ids) = self.text_ids.get(&r.text) {
                let later: Vec<u64> = ids.iter().copied().filter(|id| *id > a.id).collect();
                if !later.is_empty() {
                    found.push((
                        a.cycle,
                        format!("cid {cid} acked with id {} in {}, published again as {}", a.id, r.room, short(&later)),
                    ));
                }
            }
        }
        found.sort();
        for (cycle, d) in found {
            self.violate_at(Check::Dedupe, cycle, d);
        }
    }
}
