//! A fast minimal room server for bench tests: every text frame any client sends is sent back,
//! unmasked, to every connection (the sender included), and all that one read produced leaves
//! in one write per connection. It is what a very fast peer looks like to `natter bench`: the
//! `login` echo and the first messages arrive together, many frames per read.
//!
//! The upgrade answer carries a fixed `Sec-WebSocket-Accept`: the bench does not check it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

type Peers = Arc<Mutex<Vec<mpsc::UnboundedSender<Arc<Vec<u8>>>>>>;

/// Starts the server on a loopback port; it runs until the test's runtime ends.
pub async fn start_echo_room() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peers: Peers = Arc::default();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            sock.set_nodelay(true).unwrap();
            tokio::spawn(serve(sock, peers.clone()));
        }
    });
    addr
}

async fn serve(sock: tokio::net::TcpStream, peers: Peers) {
    let (mut rd, mut wr) = sock.into_split();
    let mut buf = Vec::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 4096];
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    buf.drain(..end);
    let head = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    let (tx, mut rx) = mpsc::unbounded_channel::<Arc<Vec<u8>>>();
    // The 101 goes first, alone: before this connection is a peer, nothing else is queued to it.
    if wr.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    peers.lock().unwrap().push(tx);
    tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(first) = rx.recv().await {
            out.extend_from_slice(&first);
            while let Ok(more) = rx.try_recv() {
                out.extend_from_slice(&more);
            }
            if wr.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    });
    loop {
        let mut batch = Vec::new();
        while let Some((opcode, payload, used)) = client_frame(&buf) {
            buf.drain(..used);
            match opcode {
                1 => server_frame(&mut batch, &payload),
                8 => return,
                _ => {}
            }
        }
        if !batch.is_empty() {
            let batch = Arc::new(batch);
            peers.lock().unwrap().retain(|p| p.send(batch.clone()).is_ok());
        }
        let mut chunk = [0u8; 16384];
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A complete masked client frame at the start of `b`: opcode, unmasked payload, bytes used.
fn client_frame(b: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if b.len() < 2 {
        return None;
    }
    let (len, mut at) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if b.len() < at + 4 + len {
        return None;
    }
    let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
    at += 4;
    let payload = b[at..at + len].iter().enumerate().map(|(i, c)| c ^ mask[i & 3]).collect();
    Some((b[0] & 0x0f, payload, at + len))
}

fn server_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.push(0x81);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= u16::MAX as usize => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}
