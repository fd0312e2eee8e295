#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets: fuzz/corpus/<target>/<name>.

Small, meaningful inputs per target, so that fuzzing starts from the shapes natter really sees.
Run from anywhere: `python3 fuzz/seeds.py`. The files are committed; rerun after changing this.
"""
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- frames: [n][n schedule bytes][client bytes] ----
def frame(fin, opcode, payload, mask=b"\x01\x02\x03\x04", masked=True):
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n <= 0xFFFF:
        head += bytes([bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", n)
    if not masked:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def frames_seed(stream, schedule=b""):
    return bytes([len(schedule)]) + schedule + stream


TEXT, BINARY, CLOSE, PING, PONG, CONT = 1, 2, 8, 9, 10, 0
login = json.dumps({"event": "login", "name": "alice", "roomid": "r1"}).encode()
write("frames", "text", frames_seed(frame(True, TEXT, login)))
write(
    "frames",
    "fragmented-with-ping",
    # A Pending before the first and third reads, then 1-, 2- and 5-byte chunks.
    frames_seed(
        frame(False, TEXT, b"frag") + frame(True, PING, b"p") + frame(True, CONT, b"ment"),
        bytes([0x80, 0x01, 0x81, 0x04]),
    ),
)
write("frames", "ping-pong", frames_seed(frame(True, PING, b"hb") + frame(True, PONG, b"")))
write("frames", "close-1000", frames_seed(frame(True, CLOSE, struct.pack(">H", 1000) + b"bye")))
write("frames", "close-empty", frames_seed(frame(True, CLOSE, b"")))
write("frames", "binary", frames_seed(frame(True, BINARY, b"\x00\xff")))
# A 16-bit length (200 bytes), read in 16-byte chunks.
write("frames", "text-200", frames_seed(frame(True, TEXT, ("x" * 200).encode()), bytes([0x40])))
write(
    "frames",
    "utf8-fragments",
    # "é" split across two fragments: only the whole message must be valid UTF-8.
    frames_seed(frame(False, TEXT, b"caf\xc3") + frame(False, CONT, b"\xa9 ") + frame(True, CONT, b"ok")),
)
write("frames", "unmasked", frames_seed(frame(True, TEXT, b"hi", masked=False)))
write("frames", "too-big-64bit", frames_seed(bytes([0x81, 0xFF]) + struct.pack(">Q", 1 << 20) + b"\x00" * 4))

# ---- protocol: one JSON text per seed, the client events of PROTOCOL.md ----
events = {
    "auth": {"event": "auth", "message": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2ln"},
    "login": {"event": "login", "name": "alice", "roomid": "r1", "since": 17},
    "login-default": {"event": "login", "roomid": ""},
    "message": {"event": "message", "roomid": "r1", "message": "hi", "cid": "c-42"},
    "message-inferred": {"event": "message", "message": "h\u00e9 \U0001F600"},
    "leave": {"event": "leave", "roomid": "team-\u00fc.1"},
    "heartbeat-ping": {"event": "heartbeat", "message": "ping"},
    "heartbeat-pong": {"event": "heartbeat", "message": "pong"},
}
for name, ev in events.items():
    write("protocol", name, json.dumps(ev, ensure_ascii=False).encode())
write("protocol", "escapes-nulls", b'{"event":"message","message":"a\\"b\\u0000","roomid":null,"cid":null,"x":[1,{}]}')


# ---- store_keys: the physical keys of store/keys.rs, and one stored queue entry ----
def s(v):
    b = v.encode()
    return struct.pack(">H", len(b)) + b


def n(v):
    return struct.pack(">Q", v)


keys = {
    "member": b"m" + s("r1") + s("alice"),
    "user-room": b"u" + s("alice") + s("r1"),
    "online": b"p" + s("r1") + s("alice"),
    "seq": b"s" + s("r1"),
    "seq-reserved": b"r" + s("r1"),
    "history": b"h" + s("r1") + n(42),
    "queue": b"o" + s("\u00fc") + n(3),
    "dedupe": b"d" + s("alice") + s("c-42"),
}
for name, k in keys.items():
    write("store_keys", name, k)
# A queue entry value (ts | id | room len | room | message json), for parse_entry.
write("store_keys", "entry", n(1764090000000) + n(42) + s("r1") + b'{"event":"message","id":42}')


# ---- upgrade: [flags][request head]\r\n\r\n[body used as a query value] ----
def req(flags, lines, body=b"", target="GET /ws"):
    return bytes([0x30 | flags]) + (target + " HTTP/1.1\r\n").encode() + b"".join(
        (l + "\r\n").encode() for l in lines
    ) + b"\r\n" + body


BASE = [
    "Host: chat.example.com",
    "Upgrade: websocket",
    "Connection: keep-alive, Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
]
write("upgrade", "plain", req(0, BASE))
write(
    "upgrade",
    "same-origin-bearer-v1",
    req(1, BASE + ["Origin: https://chat.example.com", "Authorization: Bearer a.b.c", "Sec-WebSocket-Protocol: chat, natter.v1"]),
)
write("upgrade", "query-token", req(0, BASE, body="h\u00e9 & =%".encode(), target="GET /?a=1&token=a%2Eb+c"))
write("upgrade", "origin-null", req(0, BASE + ["Origin: null"]))
write("upgrade", "allow-listed", req(3, BASE + ["Origin: https://chat.example.com"]))
write("upgrade", "cross-origin", req(4, BASE[:1] + ["Origin: http://localhost:8080"] + BASE[1:]))
write("upgrade", "host-port", req(0, ["Host: [::1]:8080"] + BASE[1:] + ["Origin: http://[::1]:8080"]))
write("upgrade", "version-8", req(0, BASE[:4] + ["Sec-WebSocket-Version: 8"]))
write("upgrade", "bad-key", req(0, BASE[:3] + ["Sec-WebSocket-Key: short"] + BASE[4:]))
write("upgrade", "post", req(0, BASE, target="POST /ws"))

if __name__ == "__main__":
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(ROOT) for f in fs)
    print(f"corpus: {sum(len(fs) for _, _, fs in os.walk(ROOT))} files, {total} bytes in {ROOT}")
