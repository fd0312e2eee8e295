//! Bad input of every kind gets its documented answer, while other clients keep chatting.
//! JSON-level errors use the tungstenite client; RFC 6455 violations use raw frames.
mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(500);

/// Two bystanders u1/u2 in room r1 ([`two_in_room`]), then a raw client `raw` joins r1 and both
/// bystanders see its login.
async fn bystanders_and_raw(s: &Server) -> (Client, Client, RawWs) {
    let (mut a, mut b) = two_in_room(s, "r1").await;
    let r = RawWs::connect_as(s, "raw", "r1").await;
    a.recv_event("login").await;
    b.recv_event("login").await;
    (a, b, r)
}

/// a says `text`; both a and b receive exactly that message (other events in between fail).
async fn still_chatting(a: &mut Client, b: &mut Client, text: &str) {
    a.say("r1", text).await;
    for c in [a, b] {
        let mut m = c.recv_json().await;
        // presence changes of the misbehaving client may come first
        while m["event"] == "login" || m["event"] == "logout" {
            m = c.recv_json().await;
        }
        assert_message(&m, &[]);
        assert_eq!(m["message"], text, "bystander got {m}");
    }
}

#[tokio::test]
async fn every_bad_input_gets_its_error_and_the_room_goes_on() {
    let s = Server::start(ServerOpts::new()).await;
    let (mut a, mut b) = two_in_room(&s, "r1").await;
    let mut c = Client::connect_as(&s, "u3", None).await;
    c.login("r1").await;
    a.recv_event("login").await;
    b.recv_event("login").await;

    let long_room = "r".repeat(65);
    let cases: Vec<(String, &str)> = vec![
        ("not json{".into(), "bad_json"),
        ("".into(), "bad_json"),
        ("[1,2]".into(), "bad_json"),
        ("\"just a string\"".into(), "bad_json"),
        ("42".into(), "bad_json"),
        ("null".into(), "bad_json"),
        (json!({"roomid":"r1","message":"no event"}).to_string(), "bad_event"),
        (json!({"event":"dance"}).to_string(), "bad_event"),
        (json!({"event":"message","roomid":"r1","message":5}).to_string(), "bad_field"),
        (json!({"event":"message","roomid":"r1","message":null}).to_string(), "bad_field"),
        (json!({"event":"message","roomid":"r1"}).to_string(), "bad_field"),
        (json!({"event":"message","roomid":"r1","message":""}).to_string(), "bad_field"),
        (json!({"event":"message","roomid":"r1","message":"x".repeat(4097)}).to_string(), "bad_field"),
        (json!({"event":"message","roomid":"r1","message":"hi","cid":""}).to_string(), "bad_field"),
        (json!({"event":"message","roomid":"r1","message":"hi","cid":"c".repeat(65)}).to_string(), "bad_field"),
        (json!({"event":"message","roomid":"r1","message":"hi","cid":7}).to_string(), "bad_field"),
        (json!({"event":"login","roomid":"r1","name":""}).to_string(), "bad_field"),
        (json!({"event":"login","roomid":"r1","name":"n".repeat(65)}).to_string(), "bad_field"),
        (json!({"event":"login","roomid":"r1","name":5}).to_string(), "bad_field"),
        (json!({"event":"login","roomid":"bad room!"}).to_string(), "bad_room"),
        (json!({"event":"login","roomid":"a/b"}).to_string(), "bad_room"),
        (json!({"event":"login","roomid":long_room}).to_string(), "bad_room"),
        (json!({"event":"message","roomid":"bad room!","message":"x"}).to_string(), "bad_room"),
        (json!({"event":"message","roomid":"r2","message":"x"}).to_string(), "not_in_room"),
        (json!({"event":"leave","roomid":"r2"}).to_string(), "not_in_room"),
    ];
    for (i, (input, code)) in cases.iter().enumerate() {
        c.send_text(input).await;
        let e = c.expect_error(code).await;
        assert!(!e["message"].as_str().unwrap().is_empty(), "case {i} {input:?}: empty error text");
        if i % 5 == 0 {
            still_chatting(&mut a, &mut b, &format!("alive {i}")).await;
            assert_eq!(c.recv_event("message").await["message"], format!("alive {i}"));
        }
    }
    c.send_binary(b"\x00\x01binary").await;
    c.expect_error("binary_unsupported").await;

    // none of it reached the bystanders
    a.expect_silence(QUIET).await;
    b.expect_silence(Duration::from_millis(100)).await;
    // c is still connected and in the room
    c.say("r1", "c recovered").await;
    assert_eq!(c.recv_json().await["message"], "c recovered");
    assert_eq!(a.recv_json().await["message"], "c recovered");
    assert_eq!(b.recv_json().await["message"], "c recovered");
}

#[tokio::test]
async fn text_limit_counts_characters_not_bytes() {
    let s = Server::start(ServerOpts::new()).await;
    let (mut a, mut b) = two_in_room(&s, "r1").await;
    let max = "é".repeat(4096); // 8192 bytes, 4096 characters: allowed
    a.say("r1", &max).await;
    assert_eq!(a.recv_json().await["message"], max.as_str());
    assert_eq!(b.recv_json().await["message"], max.as_str());
    a.say("r1", &"é".repeat(4097)).await;
    a.expect_error("bad_field").await;
    b.expect_silence(QUIET).await;
}

#[tokio::test]
async fn text_limit_is_configurable() {
    let s = Server::start(ServerOpts::new().arg("--max-text-chars", 10)).await;
    let (mut a, _b) = two_in_room(&s, "r1").await;
    a.say("r1", "0123456789").await;
    assert_eq!(a.recv_json().await["message"], "0123456789");
    a.say("r1", "0123456789a").await;
    a.expect_error("bad_field").await;
}

#[tokio::test]
async fn room_names_unicode_and_byte_limit() {
    let s = Server::start(ServerOpts::new()).await;
    let mut a = Client::connect_as(&s, "u1", None).await;
    for room in ["Café_1.x-ü", "日本語", &"é".repeat(32), &"r".repeat(64)] {
        let l = a.login(room).await;
        assert_eq!(l["roomid"], room);
    }
    // 33 two-byte letters = 66 bytes: over 64 bytes
    a.send_json(&json!({"event":"login","roomid":"é".repeat(33)})).await;
    a.expect_error("bad_room").await;
    for room in ["with space", "semi;colon", "emoji😀", "tab\t"] {
        a.send_json(&json!({"event":"login","roomid":room})).await;
        a.expect_error("bad_room").await;
    }
}

#[tokio::test]
async fn input_errors_come_before_auth() {
    let s = Server::start(ServerOpts::new()).await;
    let mut c = Client::connect(&s).await;
    c.send_text("{not json").await;
    c.expect_error("bad_json").await;
    c.send_text("[]").await;
    c.expect_error("bad_json").await;
    c.send_binary(b"bin").await;
    c.expect_error("binary_unsupported").await;
    // still usable: auth then chat
    c.auth_as("u9", None, 3600).await;
    c.login("r1").await;
}

#[tokio::test]
async fn smuggled_identity_fields_are_ignored() {
    let s = Server::start(ServerOpts::new()).await;
    let mut a = Client::connect_as(&s, "u1", Some("Alice")).await;
    a.send_json(&json!({"event":"login","roomid":"r1","uid":"admin"})).await;
    assert_login(&a.recv_json().await, "r1", "u1", "Alice", 1, 1);
    let mut b = Client::connect_as(&s, "u2", None).await;
    b.login("r1").await;
    a.recv_event("login").await;
    a.send_json(&json!({
        "event":"message","roomid":"r1","message":"trust me",
        "uid":"admin","name":"Administrator","id":999,"ts":1,"num":99,"total":99,
        "offline":true,"replay":true,"extra":"x"
    }))
    .await;
    for c in [&mut a, &mut b] {
        let m = c.recv_json().await;
        assert_message(&m, &[]);
        assert_eq!(m["uid"], "u1");
        assert_eq!(m["name"], "Alice");
        assert_eq!(m["id"], 1);
        assert_eq!((m["num"].as_u64(), m["total"].as_u64()), (Some(2), Some(2)));
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 6455 level
// ---------------------------------------------------------------------------------------------

/// Starts a server with `opts`, two bystanders and a raw client `raw` in r1, sends `bytes` from
/// the raw client, expects close `code` and a TCP close, then checks the room still works.
async fn violation(opts: ServerOpts, bytes: Vec<Vec<u8>>, code: u16) {
    let s = Server::start(opts).await;
    let (mut a, mut b, mut r) = bystanders_and_raw(&s).await;
    for chunk in &bytes {
        if !r.try_send_bytes(chunk).await {
            break; // the server may close before reading everything
        }
    }
    r.expect_close(code).await;
    r.expect_eof(Duration::from_secs(10)).await;
    assert_logout(&a.recv_event("logout").await, "r1", "raw", "raw", 2, 3);
    still_chatting(&mut a, &mut b, "after the violation").await;
}

fn masked(fin: bool, rsv: u8, op: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(fin, rsv, op, payload, Some(MASK))
}

fn msg_json(text: &str) -> String {
    json!({"event":"message","roomid":"r1","message":text}).to_string()
}

/// `{"event":"message","roomid":"r1","message":"x"      }` padded with spaces to `len` bytes.
fn padded_message(len: usize) -> Vec<u8> {
    let head = br#"{"event":"message","roomid":"r1","message":"x""#;
    let mut v = head.to_vec();
    v.resize(len - 1, b' ');
    v.push(b'}');
    assert_eq!(v.len(), len);
    v
}

#[tokio::test]
async fn unmasked_frame_closes_1002() {
    let f = encode_frame(true, 0, OP_TEXT, msg_json("unmasked").as_bytes(), None);
    violation(ServerOpts::new(), vec![f], 1002).await;
}

#[tokio::test]
async fn reserved_bits_close_1002() {
    violation(ServerOpts::new(), vec![masked(true, 0b100, OP_TEXT, msg_json("rsv1").as_bytes())], 1002).await;
}

#[tokio::test]
async fn reserved_opcodes_close_1002() {
    violation(ServerOpts::new(), vec![masked(true, 0, 0x3, b"x")], 1002).await;
    violation(ServerOpts::new(), vec![masked(true, 0, 0xB, b"x")], 1002).await;
}

#[tokio::test]
async fn bad_control_frames_close_1002() {
    // control frame over 125 bytes
    violation(ServerOpts::new(), vec![masked(true, 0, OP_PING, &[b'p'; 126])], 1002).await;
    // fragmented control frame
    violation(ServerOpts::new(), vec![masked(false, 0, OP_PING, b"p")], 1002).await;
}

#[tokio::test]
async fn invalid_close_code_closes_1002() {
    violation(ServerOpts::new(), vec![masked(true, 0, OP_CLOSE, &999u16.to_be_bytes())], 1002).await;
}

#[tokio::test]
async fn bad_fragment_sequences_close_1002() {
    // continuation with nothing to continue
    violation(ServerOpts::new(), vec![masked(true, 0, OP_CONT, b"orphan")], 1002).await;
    // a new text frame while a fragmented message is open
    violation(
        ServerOpts::new(),
        vec![masked(false, 0, OP_TEXT, b"{\"event\":"), masked(true, 0, OP_TEXT, msg_json("x").as_bytes())],
        1002,
    )
    .await;
}

#[tokio::test]
async fn invalid_utf8_closes_1007() {
    violation(
        ServerOpts::new(),
        vec![masked(true, 0, OP_TEXT, b"{\"event\":\"message\",\"message\":\"\xff\xfe\"}")],
        1007,
    )
    .await;
}

#[tokio::test]
async fn invalid_utf8_across_fragments_closes_1007() {
    // the bytes of a valid "é" split across fragments are fine; an invalid sequence is not
    violation(
        ServerOpts::new(),
        vec![
            masked(false, 0, OP_TEXT, b"{\"event\":\"message\",\"message\":\"\xc3"),
            masked(true, 0, OP_CONT, b"\x28\"}"),
        ],
        1007,
    )
    .await;
}

#[tokio::test]
async fn oversized_message_closes_1009() {
    violation(ServerOpts::new(), vec![masked(true, 0, OP_TEXT, &padded_message(65537))], 1009).await;
}

#[tokio::test]
async fn oversized_fragments_adding_up_close_1009() {
    let msg = padded_message(90_000);
    let frames = vec![
        masked(false, 0, OP_TEXT, &msg[..30_000]),
        masked(false, 0, OP_CONT, &msg[30_000..60_000]),
        masked(true, 0, OP_CONT, &msg[60_000..]),
    ];
    violation(ServerOpts::new(), frames, 1009).await;
}

#[tokio::test]
async fn max_message_bytes_is_configurable() {
    let opts = ServerOpts::new().arg("--max-message-bytes", 1000);
    violation(opts, vec![masked(true, 0, OP_TEXT, &padded_message(1001))], 1009).await;
}

#[tokio::test]
async fn message_of_exactly_the_limit_is_allowed_whole_and_fragmented() {
    let s = Server::start(ServerOpts::new()).await;
    let (mut a, mut b, mut r) = bystanders_and_raw(&s).await;
    let msg = padded_message(65536);
    r.send_frame(true, 0, OP_TEXT, &msg).await;
    assert_eq!(r.recv_json().await["message"], "x");
    assert_eq!(a.recv_json().await["message"], "x");
    let third = msg.len() / 3;
    r.send_frame(false, 0, OP_TEXT, &msg[..third]).await;
    r.send_frame(false, 0, OP_CONT, &msg[third..2 * third]).await;
    r.send_frame(true, 0, OP_CONT, &msg[2 * third..]).await;
    let m = r.recv_json().await;
    assert_eq!((m["message"].as_str(), m["id"].as_u64()), (Some("x"), Some(2)));
    assert_eq!(a.recv_json().await["id"], 2);
    assert_eq!(b.recv_event("message").await["id"], 1);
    assert_eq!(b.recv_json().await["id"], 2);
}

#[tokio::test]
async fn fragmented_message_is_reassembled_with_interleaved_ping() {
    let s = Server::start(ServerOpts::new()).await;
    let (mut a, mut b, mut r) = bystanders_and_raw(&s).await;
    let m = msg_json("réassemblé");
    let bytes = m.as_bytes();
    // split inside the two-byte "é" on purpose
    let cut = m.find('é').unwrap() + 1;
    r.send_frame(false, 0, OP_TEXT, &bytes[..10]).await;
    r.send_frame(true, 0, OP_PING, b"are you there").await;
    r.send_frame(false, 0, OP_CONT, &bytes[10..cut]).await;
    r.send_frame(true, 0, OP_CONT, &bytes[cut..]).await;
    let pong = r.recv_frame(RECV_TIMEOUT).await.expect("timeout").expect("eof");
    assert_eq!(pong.opcode, OP_PONG, "a ping frame must be answered with a pong: {pong:?}");
    assert_eq!(pong.payload, b"are you there");
    let own = r.recv_json().await;
    assert_eq!(own["message"], "réassemblé");
    assert_eq!(own["uid"], "raw");
    for c in [&mut a, &mut b] {
        let m = c.recv_json().await;
        assert_message(&m, &[]);
        assert_eq!(m["message"], "réassemblé");
    }
}

#[tokio::test]
async fn client_close_is_echoed_with_its_code() {
    let s = Server::start(ServerOpts::new()).await;
    let (mut a, _b) = two_in_room(&s, "r1").await;
    let mut r = RawWs::connect_as(&s, "raw", "r1").await;
    a.recv_event("login").await;
    r.send_frame(true, 0, OP_CLOSE, &[0x03, 0xE8, b'b', b'y', b'e']).await;
    r.expect_close(1000).await;
    r.expect_eof(Duration::from_secs(10)).await;
    assert_logout(&a.recv_event("logout").await, "r1", "raw", "raw", 2, 3);
}

/// Opening a room flushes the store (its id reservation). Many rooms opening at the same
/// moment once hung sled for good (every thread of its IO pool waiting in a flush for a log
/// write queued behind them; found by benches/cluster.sh): 500 connections joining 500 new
/// rooms, 64 at a time, all get in.
#[tokio::test]
async fn many_rooms_opened_at_once_all_open() {
    let s = std::sync::Arc::new(Server::start(ServerOpts::new().arg("--max-connections-per-ip", 10_000)).await);
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut joins = Vec::new();
    for i in 0..500 {
        let (s, gate) = (s.clone(), gate.clone());
        joins.push(tokio::spawn(async move {
            let _turn = gate.acquire().await.unwrap();
            let mut c = Client::connect_as(&s, &format!("u{i}"), None).await;
            c.login(&format!("room-{i}")).await;
            c
        }));
    }
    let mut clients = Vec::new();
    for j in joins {
        clients.push(j.await.expect("every join gets its login"));
    }
}
