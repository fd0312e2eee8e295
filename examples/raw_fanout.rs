//! The raw-TCP fan-out reference for `benches/compare.sh`: the ceiling of this machine for a
//! room broadcast. It does the least a room-broadcast server can: a hand-made upgrade, client
//! frames unmasked, and each text frame in a room encoded once and copied into every member's
//! buffer, which that member's writer sends in one write. No JSON parsing beyond finding the
//! `login`'s roomid, no auth, no store, no limits: not a server to run, a yardstick.
//!
//! `cargo run --release --example raw_fanout -- 127.0.0.1:9300`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// One member's outgoing bytes: frames are appended here, its writer drains them in one write.
struct Peer {
    out: Mutex<BytesMut>,
    ready: Notify,
}

type Rooms = Arc<Mutex<HashMap<String, Vec<Arc<Peer>>>>>;

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9300".into());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&addr).await?;
        println!("raw fan-out reference listening on ws://{}", listener.local_addr()?);
        let rooms: Rooms = Arc::default();
        loop {
            let (tcp, _) = listener.accept().await?;
            tcp.set_nodelay(true)?;
            tokio::spawn(serve(tcp, rooms.clone()));
        }
    })
}

async fn serve(tcp: TcpStream, rooms: Rooms) {
    let (mut rd, mut wr) = tcp.into_split();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // The upgrade: find the key, answer 101.
    let key = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            buf.advance(end + 4);
            let key = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("sec-websocket-key").then(|| v.trim().to_string())
            });
            match key {
                Some(k) => break k,
                None => return,
            }
        }
        if matches!(rd.read_buf(&mut buf).await, Ok(0) | Err(_)) {
            return;
        }
    };
    let accept = natter::bench::client::base64(&sha1(format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes()));
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if wr.write_all(resp.as_bytes()).await.is_err() {
        return;
    }
    let me = Arc::new(Peer { out: Mutex::new(BytesMut::new()), ready: Notify::new() });
    let writer = me.clone();
    tokio::spawn(async move {
        let mut batch = BytesMut::new();
        loop {
            writer.ready.notified().await;
            std::mem::swap(&mut batch, &mut writer.out.lock().unwrap());
            if !batch.is_empty() && wr.write_all(&batch).await.is_err() {
                return;
            }
            batch.clear();
        }
    });
    let mut room: Option<String> = None;
    loop {
        while let Some((opcode, len, head)) = frame_at(&buf) {
            let mask = [buf[head - 4], buf[head - 3], buf[head - 2], buf[head - 1]];
            let payload = &mut buf[head..head + len];
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i & 3];
            }
            match opcode {
                1 => {
                    if room.is_none() && find(payload, br#""event":"login""#).is_some() {
                        room = roomid(payload);
                        if let Some(r) = &room {
                            rooms.lock().unwrap().entry(r.clone()).or_default().push(me.clone());
                        }
                    }
                    let is_chat = find(payload, br#""event":"message""#).is_some()
                        || find(payload, br#""event":"login""#).is_some();
                    if let (true, Some(r)) = (is_chat, &room) {
                        broadcast(&rooms, r, payload);
                    }
                }
                8 => return leave(&rooms, room.as_deref(), &me),
                _ => {}
            }
            buf.advance(head + len);
        }
        if matches!(rd.read_buf(&mut buf).await, Ok(0) | Err(_)) {
            return leave(&rooms, room.as_deref(), &me);
        }
    }
}

/// Encode once, copy into every member's buffer, wake each writer.
fn broadcast(rooms: &Rooms, room: &str, payload: &[u8]) {
    let mut frame = BytesMut::with_capacity(payload.len() + 10);
    frame.put_u8(0x81);
    match payload.len() {
        n if n < 126 => frame.put_u8(n as u8),
        n if n <= 65_535 => {
            frame.put_u8(126);
            frame.put_u16(n as u16);
        }
        n => {
            frame.put_u8(127);
            frame.put_u64(n as u64);
        }
    }
    frame.put_slice(payload);
    let rooms = rooms.lock().unwrap();
    for peer in rooms.get(room).into_iter().flatten() {
        peer.out.lock().unwrap().extend_from_slice(&frame);
        peer.ready.notify_one();
    }
}

fn leave(rooms: &Rooms, room: Option<&str>, me: &Arc<Peer>) {
    if let Some(r) = room {
        if let Some(members) = rooms.lock().unwrap().get_mut(r) {
            members.retain(|p| !Arc::ptr_eq(p, me));
        }
    }
}

/// A complete masked client frame at the start: (opcode, payload length, header length).
fn frame_at(b: &[u8]) -> Option<(u8, usize, usize)> {
    if b.len() < 2 {
        return None;
    }
    let (len, head) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 8),
        127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().ok()?) as usize, 14),
        126 | 127 => return None,
        n => (n as usize, 6),
    };
    (b.len() >= head + len).then_some((b[0] & 0x0f, len, head))
}

fn roomid(json: &[u8]) -> Option<String> {
    let start = find(json, br#""roomid":""#)? + 10;
    let len = json[start..].iter().position(|&c| c == b'"')?;
    Some(String::from_utf8_lossy(&json[start..start + len]).into_owned())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// SHA-1, only for the upgrade's accept key (RFC 6455 fixes the algorithm).
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for chunk in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(chunk[i * 4..i * 4 + 4].try_into().unwrap());
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a.rotate_left(5).wrapping_add(f).wrapping_add(e).wrapping_add(k).wrapping_add(*wi);
            (e, d, c, b, a) = (d, c, b.rotate_left(30), a, t);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}
