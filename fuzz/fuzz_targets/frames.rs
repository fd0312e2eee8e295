//! frames: `session::MessageReader` on arbitrary client bytes never panics, and what it yields
//! keeps RFC 6455 and PROTOCOL.md: every `Text` is valid UTF-8 within the whole-message limit
//! (fragments added up), pings are at most 125 bytes, close codes are allowed ones, violations
//! are 1002/1007/1009 only; the result equals a plain whole-buffer model of the frame rules; and
//! the same bytes read in fuzzer-chosen chunks, with the `next()` future dropped at every
//! `Pending` (cancel-safety), give the same inputs.
#![no_main]

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use natter::session::{Input, MessageReader, ReadError};
use tokio::io::{AsyncRead, ReadBuf};

/// Small, so that the limit is reached by ordinary inputs.
const MAX: usize = 1024;

#[derive(Debug, PartialEq, Eq)]
enum Out {
    Text(String),
    Binary,
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
    Violation(u16),
    Gone,
}

fn out(r: Result<Input, ReadError>) -> Out {
    match r {
        Ok(Input::Text(t)) => Out::Text(t),
        Ok(Input::Binary) => Out::Binary,
        Ok(Input::Ping(p)) => Out::Ping(p),
        Ok(Input::Pong(_)) => Out::Pong,
        Ok(Input::Close(c)) => Out::Close(c),
        Err(ReadError::Violation(code, _)) => Out::Violation(code),
        Err(ReadError::Gone) => Out::Gone,
    }
}

fn terminal(o: &Out) -> bool {
    matches!(o, Out::Violation(_) | Out::Gone)
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("runtime"))
}

/// Everything the reader yields over `&[u8]`, up to and including the error that ends it.
async fn read_all(bytes: &[u8]) -> Vec<Out> {
    let mut r = MessageReader::new(bytes, MAX);
    let mut v = Vec::new();
    loop {
        let o = out(r.next().await);
        let end = terminal(&o);
        v.push(o);
        if end {
            return v;
        }
    }
}

/// Returns the bytes in chunks chosen by `schedule` (size from the low bits, `Pending` first
/// when the high bit is set).
struct Chunked<'a> {
    data: &'a [u8],
    schedule: &'a [u8],
    step: usize,
    pended: bool,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let s = self.schedule.get(self.step % self.schedule.len().max(1)).copied().unwrap_or(0x3f);
        if s & 0x80 != 0 && !self.pended {
            self.pended = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let size = ((s & 0x3f) as usize + 1) * if s & 0x40 != 0 { 16 } else { 1 };
        let n = size.min(buf.remaining()).min(self.data.len());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.step += 1;
        self.pended = false;
        Poll::Ready(Ok(()))
    }
}

/// The same, read through `Chunked`, with the `next()` future dropped at every `Pending`.
fn read_chunked_cancelled(bytes: &[u8], schedule: &[u8]) -> Vec<Out> {
    let mut r = MessageReader::new(Chunked { data: bytes, schedule, step: 0, pended: false }, MAX);
    let mut cx = Context::from_waker(Waker::noop());
    let mut v = Vec::new();
    loop {
        let polled = {
            let fut = pin!(r.next());
            fut.poll(&mut cx)
        };
        // Pending: the future is dropped here, mid-read, and `next()` is called afresh.
        if let Poll::Ready(res) = polled {
            let o = out(res);
            let end = terminal(&o);
            v.push(o);
            if end {
                return v;
            }
        }
    }
}

fn allowed_close_code(c: u16) -> bool {
    matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// RFC 6455 client frames parsed from the whole buffer at once, with natter's checks in
/// natter's order (header checks before the payload, so a bad header wins over a short input).
fn model(mut s: &[u8]) -> Vec<Out> {
    let mut v = Vec::new();
    let mut partial: Option<(u8, Vec<u8>)> = None;
    loop {
        // `None`: a first or middle fragment, which is no input of its own.
        let o = (|| {
            if s.len() < 2 {
                return Some(Out::Gone);
            }
            let (fin, op) = (s[0] & 0x80 != 0, s[0] & 0x0f);
            if s[0] & 0x70 != 0 || !matches!(op, 0 | 1 | 2 | 8 | 9 | 10) || s[1] & 0x80 == 0 {
                return Some(Out::Violation(1002));
            }
            let control = op >= 8;
            if control && !fin {
                return Some(Out::Violation(1002));
            }
            let (len, ext) = match s[1] & 0x7f {
                126 if s.len() >= 4 => (u16::from_be_bytes([s[2], s[3]]) as u64, 2),
                127 if s.len() >= 10 => (u64::from_be_bytes(s[2..10].try_into().unwrap()), 8),
                126 | 127 => return Some(Out::Gone),
                n => (n as u64, 0),
            };
            if control && len > 125 {
                return Some(Out::Violation(1002));
            }
            if len > MAX as u64 {
                return Some(Out::Violation(1009));
            }
            let head = 2 + ext + 4;
            let len = len as usize;
            if s.len() < head + len {
                return Some(Out::Gone);
            }
            let mask = &s[head - 4..head];
            let payload: Vec<u8> = s[head..head + len].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            s = &s[head + len..];
            let whole = |op: u8, p: Vec<u8>| match op {
                2 => Out::Binary,
                _ => String::from_utf8(p).map(Out::Text).unwrap_or(Out::Violation(1007)),
            };
            Some(match op {
                8 => match payload.len() {
                    0 => Out::Close(None),
                    1 => Out::Violation(1002),
                    _ => {
                        let c = u16::from_be_bytes([payload[0], payload[1]]);
                        if !allowed_close_code(c) {
                            Out::Violation(1002)
                        } else if std::str::from_utf8(&payload[2..]).is_err() {
                            Out::Violation(1007)
                        } else {
                            Out::Close(Some(c))
                        }
                    }
                },
                9 => Out::Ping(payload),
                10 => Out::Pong,
                1 | 2 if partial.is_some() => Out::Violation(1002),
                1 | 2 if fin => whole(op, payload),
                1 | 2 => {
                    partial = Some((op, payload));
                    return None;
                }
                _ => match partial.take() {
                    None => Out::Violation(1002),
                    Some((_, p)) if p.len() + payload.len() > MAX => Out::Violation(1009),
                    Some((first, mut p)) => {
                        p.extend_from_slice(&payload);
                        if !fin {
                            partial = Some((first, p));
                            return None;
                        }
                        whole(first, p)
                    }
                },
            })
        })();
        if let Some(o) = o {
            let end = terminal(&o);
            v.push(o);
            if end {
                return v;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // [n][n schedule bytes][the client's bytes]
    let Some((&n, rest)) = data.split_first() else { return };
    let n = (n as usize % 16).min(rest.len());
    let (schedule, stream) = rest.split_at(n);

    let plain = runtime().block_on(read_all(stream));
    for o in &plain {
        match o {
            Out::Text(t) => assert!(t.len() <= MAX, "text of {} bytes over the limit", t.len()),
            Out::Ping(p) => assert!(p.len() <= 125, "ping payload of {} bytes", p.len()),
            Out::Close(Some(c)) => assert!(allowed_close_code(*c), "close code {c} accepted"),
            Out::Violation(c) => assert!(matches!(c, 1002 | 1007 | 1009), "violation code {c}"),
            _ => {}
        }
    }
    assert_eq!(plain, model(stream), "reader and model disagree");
    assert_eq!(plain, read_chunked_cancelled(stream, schedule), "chunked/cancelled reads disagree");
});
