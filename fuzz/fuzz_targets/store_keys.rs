//! store_keys: `store::keys::Key::decode` on arbitrary bytes never panics, and a key it returns
//! round-trips (`decode(encode(k)) == k`, and `encode(k)` is exactly the input: one key has one
//! byte form). `sled_store::parse_entry` on arbitrary bytes never panics. Only these three are named, so the target survives changes to the value layouts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter::store::keys::Key;
use natter::store::sled_store::parse_entry;

fuzz_target!(|data: &[u8]| {
    if let Some(k) = Key::decode(data) {
        let enc = k.encode();
        assert_eq!(Key::decode(&enc).as_ref(), Some(&k), "{k:?} does not round-trip");
        assert_eq!(data, &enc[..], "{k:?} decoded from bytes that are not its encoding");
        // The logical name never panics either.
        std::hint::black_box(k.logical());
    }
    std::hint::black_box(parse_entry(data).is_some());
});
