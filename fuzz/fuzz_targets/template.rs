//! Template resolution over arbitrary values: every read resolves or answers an error naming
//! the problem, never panics, and never answers much more than the value limit, however the
//! values reference each other.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_protocol::view::Renderer;
use meridian_protocol::{Address, CacheState, EntryState, Revision, Version};

const LIMIT_BYTES: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Lines are `key=value`; values that are not JSON are stored as JSON strings.
    let mut entries = Vec::new();
    for (i, line) in text.lines().take(16).enumerate() {
        let (key, value) = line.split_once('=').unwrap_or((line, "null"));
        let Ok(address) = Address::parse("app", "prod", key) else {
            continue;
        };
        let json = if serde_json::from_str::<serde_json::Value>(value).is_ok() {
            value.to_string()
        } else {
            serde_json::to_string(value).expect("a string encodes")
        };
        let entry = EntryState {
            revision: Revision(i as u64 + 1),
            version: Version(1),
            value: Some(json.into()),
        };
        entries.push((address, entry));
    }
    let state = CacheState::from_entries(Revision(16), entries.clone());
    let mut renderer = Renderer::new(&state, "app", "prod").with_max_value_bytes(LIMIT_BYTES);
    for (address, entry) in &entries {
        let stored = entry.value.as_deref().unwrap_or("null");
        if let Ok(rendered) = renderer.render(&address.key, stored) {
            // Bounded by the limit (re-serialising numbers may change a few bytes, never
            // multiply them).
            let bound = 2 * LIMIT_BYTES.max(stored.len());
            assert!(rendered.len() <= bound, "{} bytes", rendered.len());
            serde_json::from_str::<serde_json::Value>(&rendered).expect("renders JSON");
        }
    }
});
