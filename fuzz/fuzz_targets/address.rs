//! The address and key grammar: any input is accepted or refused with an error, never a panic,
//! and whatever is accepted is valid by every other check and round-trips through its text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_protocol::Address;
use meridian_protocol::addr::validate_key_prefix;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '/');
    let (app, env, key) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    if let Ok(a) = Address::parse(app, env, key) {
        assert!(a.is_valid());
        assert!(a.key.len() <= 256);
        assert_eq!(a.to_string(), format!("{app}/{env}/{key}"));
        assert!(validate_key_prefix(key).is_ok(), "a key is a valid prefix");
    }
    let _ = validate_key_prefix(text);
});
