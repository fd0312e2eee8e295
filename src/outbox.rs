//! The per-connection outbound queue between the hub (many producers) and the connection's
//! writer task (one consumer). Bounded in messages and bytes; a push never waits, so a slow
//! reader can never slow a room down: when full, the connection is marked for close 1013.

use crate::sync::LockExt;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

/// A close the writer sends after what is already queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseReq {
    pub code: u16,
    pub reason: String,
}

/// The close "code" of an outbox whose socket failed (1006: never sent on the wire).
pub const ABANDONED: u16 = 1006;

/// The outcome of a push.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Full now: nothing more is queued, close 1013 follows. Reported once per connection.
    Overflow,
    /// Already closing: the frame was dropped.
    Dropped,
}

struct State {
    queue: VecDeque<Bytes>,
    /// Frames handed to the writer and not yet written: they still count toward the limits.
    in_flight: usize,
    /// Bytes queued plus bytes in flight.
    bytes: usize,
    in_flight_bytes: usize,
    close: Option<CloseReq>,
}

pub struct Outbox {
    state: Mutex<State>,
    /// `state.close.is_some()`, readable without the lock: the hub checks it for every
    /// connection of a room on each publish (a closing connection counts as offline).
    closing_flag: AtomicBool,
    /// Wakes the writer (permit semantics: a push before it waits is not lost).
    wake: Notify,
    /// Wakes the session supervisor when a close is requested.
    closing: Notify,
    max_messages: usize,
    max_bytes: usize,
}

impl Outbox {
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        Outbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                in_flight: 0,
                bytes: 0,
                in_flight_bytes: 0,
                close: None,
            }),
            closing_flag: AtomicBool::new(false),
            wake: Notify::new(),
            closing: Notify::new(),
            max_messages,
            max_bytes,
        }
    }

    /// Queues one encoded frame; never waits.
    pub fn push(&self, frame: Bytes) -> Pushed {
        let mut st = self.state.locked();
        if st.close.is_some() {
            return Pushed::Dropped;
        }
        if st.queue.len() + st.in_flight >= self.max_messages || st.bytes + frame.len() > self.max_bytes {
            st.close = Some(CloseReq { code: 1013, reason: "slow consumer".into() });
            self.closing_flag.store(true, Ordering::Release);
            drop(st);
            self.wake.notify_one();
            self.closing.notify_one();
            return Pushed::Overflow;
        }
        st.bytes += frame.len();
        let was_empty = st.queue.is_empty();
        st.queue.push_back(frame);
        drop(st);
        // Only the push that makes the queue non-empty wakes the writer: until the writer
        // drains it, that wake (a stored permit if it is busy) is still owed to it.
        if was_empty {
            self.wake.notify_one();
        }
        Pushed::Queued
    }

    /// Whether `frames` more frames of `bytes` in all would fit now, without overflowing.
    pub fn has_room(&self, frames: usize, bytes: usize) -> bool {
        let st = self.state.locked();
        st.close.is_none()
            && st.queue.len() + st.in_flight + frames <= self.max_messages
            && st.bytes + bytes <= self.max_bytes
    }

    /// Asks the writer to send a close frame after the queued frames. The first request wins.
    pub fn close(&self, code: u16, reason: &str) {
        let mut st = self.state.locked();
        if st.close.is_none() {
            st.close = Some(CloseReq { code, reason: reason.into() });
            self.closing_flag.store(true, Ordering::Release);
        }
        drop(st);
        self.wake.notify_one();
        self.closing.notify_one();
    }

    /// Writer side: the socket failed; nothing will be written any more. Later pushes are
    /// dropped, so nobody mistakes this outbox for a live connection.
    pub fn abandon(&self) {
        let mut st = self.state.locked();
        if st.close.is_none() {
            st.close = Some(CloseReq { code: ABANDONED, reason: "connection lost".into() });
            self.closing_flag.store(true, Ordering::Release);
        }
        drop(st);
        self.closing.notify_one();
    }

    /// A close was requested (or the socket failed): nothing more will be delivered.
    pub fn is_closing(&self) -> bool {
        self.closing_flag.load(Ordering::Acquire)
    }

    /// The close requested, if any (for the session's bookkeeping).
    pub fn close_request(&self) -> Option<CloseReq> {
        self.state.locked().close.clone()
    }

    /// Writer side: moves every queued frame into `into` (they count as pending until
    /// `written`); returns the close request when the queue is empty and a close is pending.
    /// Waits while there is nothing to do.
    pub async fn take(&self, into: &mut Vec<Bytes>) -> Option<CloseReq> {
        loop {
            {
                let mut st = self.state.locked();
                if Self::move_queued(&mut st, into) {
                    return None;
                }
                if let Some(c) = &st.close {
                    return Some(c.clone());
                }
            }
            self.wake.notified().await;
        }
    }

    /// Writer side: adds whatever was queued since `take` to `into`, without waiting.
    pub fn take_more(&self, into: &mut Vec<Bytes>) {
        Self::move_queued(&mut self.state.locked(), into);
    }

    /// Moves the queue into the writer's hands (counted in flight until `written`).
    fn move_queued(st: &mut State, into: &mut Vec<Bytes>) -> bool {
        if st.queue.is_empty() {
            return false;
        }
        st.in_flight += st.queue.len();
        st.in_flight_bytes += st.queue.iter().map(Bytes::len).sum::<usize>();
        into.extend(st.queue.drain(..));
        true
    }

    /// Writer side, when idle: give the queue's spare capacity back.
    pub fn compact(&self) {
        self.state.locked().queue.shrink_to_fit();
    }

    /// Writer side: the frames of the last `take` are written.
    pub fn written(&self) {
        let mut st = self.state.locked();
        st.bytes -= st.in_flight_bytes;
        st.in_flight = 0;
        st.in_flight_bytes = 0;
    }

    /// Supervisor side: resolves once a close has been requested.
    pub async fn closing(&self) {
        loop {
            if self.is_closing() {
                return;
            }
            self.closing.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_marks_close_1013_and_drops_the_rest() {
        let o = Outbox::new(2, 1000);
        assert_eq!(o.push(Bytes::from_static(b"a")), Pushed::Queued);
        assert_eq!(o.push(Bytes::from_static(b"b")), Pushed::Queued);
        assert_eq!(o.push(Bytes::from_static(b"c")), Pushed::Overflow);
        assert_eq!(o.push(Bytes::from_static(b"d")), Pushed::Dropped);
        assert_eq!(o.close_request().unwrap().code, 1013);
        let o = Outbox::new(100, 3);
        assert_eq!(o.push(Bytes::from_static(b"abcd")), Pushed::Overflow);
    }

    #[tokio::test]
    async fn frames_being_written_still_count() {
        let o = Outbox::new(2, 1000);
        o.push(Bytes::from_static(b"a"));
        o.push(Bytes::from_static(b"b"));
        let mut v = Vec::new();
        o.take(&mut v).await;
        // The writer holds both and has not written them yet: the queue is still full.
        assert_eq!(o.push(Bytes::from_static(b"c")), Pushed::Overflow);
        let o = Outbox::new(2, 1000);
        o.push(Bytes::from_static(b"a"));
        o.take(&mut v).await;
        o.written();
        assert_eq!(o.push(Bytes::from_static(b"b")), Pushed::Queued);
        assert_eq!(o.push(Bytes::from_static(b"c")), Pushed::Queued);
    }

    #[tokio::test]
    async fn writer_gets_frames_then_the_close() {
        let o = Outbox::new(10, 1000);
        o.push(Bytes::from_static(b"a"));
        o.close(1000, "bye");
        let mut v = Vec::new();
        assert_eq!(o.take(&mut v).await, None);
        assert_eq!(v.len(), 1);
        o.written();
        assert_eq!(o.take(&mut v).await.unwrap().code, 1000);
    }
}
