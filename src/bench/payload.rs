//! The bench's message text: run, sender, sequence and send time in a marker any room-broadcast
//! server passes through unchanged (plain ASCII, nothing JSON must escape), padded to `--size`.
//! The run number keeps two runs apart on a server that sends every room's traffic to everyone
//! (a minimal echo server): another run's messages are not this run's deliveries.

/// `~nb|RUN|SENDER|SEQ|MICROS|~` then `x` padding.
pub fn text(run: u32, sender: u32, seq: u64, micros: u64, size: usize) -> String {
    let mut s = format!("~nb|{run}|{sender}|{seq}|{micros}|~");
    while s.len() < size {
        s.push('x');
    }
    s
}

/// A message's `cid`: unique per run, sender and sequence, since natter dedupes a uid's cids
/// across rooms for 10 minutes (and the runs of one bench reuse the uids).
pub fn cid(run: u32, sender: u32, seq: u64) -> String {
    format!("c{run}-{sender}-{seq}")
}

/// What a received frame carries, if it is a bench message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub sender: u32,
    pub seq: u64,
    pub micros: u64,
}

/// Find and read the marker of run `run` anywhere in a frame (the servers wrap it in JSON of
/// their own); a frame of another run is not a bench message of this one.
pub fn parse(frame: &[u8], run: u32) -> Option<Mark> {
    let start = super::client::find(frame, b"~nb|")? + 4;
    let mut fields = [0u64; 4];
    let mut i = start;
    for f in &mut fields {
        let mut any = false;
        while let Some(&c) = frame.get(i) {
            i += 1;
            if c == b'|' {
                break;
            }
            if !c.is_ascii_digit() {
                return None;
            }
            *f = f.checked_mul(10)?.checked_add((c - b'0') as u64)?;
            any = true;
        }
        if !any {
            return None;
        }
    }
    (frame.get(i) == Some(&b'~') && fields[0] == run as u64).then(|| Mark {
        sender: fields[1] as u32,
        seq: fields[2],
        micros: fields[3],
    })
}

/// Records `seq` as the latest seen from one sender by one receiver; false when it is not newer
/// (a duplicate). One reader writes each slot, so plain loads and stores are enough.
pub fn first_time(slot: &std::sync::atomic::AtomicU64, seq: u64) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    if seq <= slot.load(Relaxed) {
        return false;
    }
    slot.store(seq, Relaxed);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_inside_json() {
        let t = text(9, 17, 4, 123_456, 64);
        assert_eq!(t.len(), 64);
        let frame = format!(r#"{{"event":"message","message":"{t}","num":3}}"#);
        assert_eq!(parse(frame.as_bytes(), 9), Some(Mark { sender: 17, seq: 4, micros: 123_456 }));
        assert_eq!(parse(frame.as_bytes(), 8), None, "another run's message");
        assert_eq!(parse(b"~nb|9|1|2|~", 9), None);
        assert_eq!(parse(b"no marker", 9), None);
    }
}
