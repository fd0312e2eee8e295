//! What the criterion benches share: the server's encoding of one published message, as the
//! hub builds it (sender, room, counts and cid vary by bench).

use natter::protocol::{self, MessageOut};

pub fn message_json(text: &str, online: usize, total: usize, cid: Option<&str>) -> Vec<u8> {
    protocol::message(&MessageOut {
        event: "message",
        id: 48_213,
        roomid: "lobby",
        uid: "u-7f3a9c",
        name: "alice",
        message: text,
        num: online,
        total,
        ts: 1_764_100_000_000,
        cid,
    })
}
