//! A secret as stored at its key, `{"$secret": {…}}`: the sealed value, the previous value
//! during a rotation's grace period, and the rotation policy; and how every read that must
//! not show it masks it (`"value": null, "secret": true, "fingerprint": …`).

use serde::{Deserialize, Serialize};

use super::{SECRET_FIELD, Sealed};

/// The previous value of a rotated secret, served (to readers who ask) until `until_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Previous {
    /// The previous value, sealed for the version it was written at.
    pub value: Sealed,
    /// End of the grace period, ms since the Unix epoch.
    pub until_ms: u64,
}

/// A secret as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredSecret {
    /// The current value.
    pub value: Sealed,
    /// The value before the last rotation, while its grace period lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Previous>,
    /// When the value was last set, ms since the Unix epoch.
    pub updated_ms: u64,
    /// The value should be rotated this many seconds after it was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_every_s: Option<u64>,
    /// The value stops being valid at this time, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

/// What a secret needs: rotation (its `rotate_every_s` has passed) or replacement (expired).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Due {
    /// Past its rotation time.
    Rotation,
    /// Past its expiry.
    Expired,
}

impl StoredSecret {
    /// The stored JSON text, `{"$secret": {…}}`.
    pub fn to_text(&self) -> String {
        serde_json::json!({ SECRET_FIELD: self }).to_string()
    }

    /// The secret a stored value holds, if it holds one.
    pub fn parse(text: &str) -> Option<Self> {
        if !is_sealed_text(text) {
            return None;
        }
        #[derive(Deserialize)]
        struct Outer {
            #[serde(rename = "$secret")]
            secret: StoredSecret,
        }
        serde_json::from_str::<Outer>(text).ok().map(|o| o.secret)
    }

    /// The previous value, if its grace period lasts at `now_ms`.
    pub fn previous_at(&self, now_ms: u64) -> Option<&Sealed> {
        self.previous
            .as_ref()
            .filter(|p| p.until_ms > now_ms)
            .map(|p| &p.value)
    }

    /// When the value is due for rotation, ms since the Unix epoch.
    pub fn rotate_at_ms(&self) -> Option<u64> {
        self.rotate_every_s
            .map(|s| self.updated_ms.saturating_add(s.saturating_mul(1000)))
    }

    /// Whether it is due or expired at `now_ms` (expired wins).
    pub fn due(&self, now_ms: u64) -> Option<Due> {
        if self.expires_at_ms.is_some_and(|t| t <= now_ms) {
            Some(Due::Expired)
        } else if self.rotate_at_ms().is_some_and(|t| t <= now_ms) {
            Some(Due::Rotation)
        } else {
            None
        }
    }
}

/// Whether stored JSON text is a secret. Plain values may not be objects with a `$secret`
/// field (see [`is_reserved_value`]), and stored JSON is compact with sorted fields, so the
/// prefix decides.
pub fn is_sealed_text(text: &str) -> bool {
    text.starts_with("{\"$secret\":")
}

/// Whether a value written as plain configuration would look like a secret: refused.
pub fn is_reserved_value(value: &serde_json::Value) -> bool {
    value
        .as_object()
        .is_some_and(|o| o.contains_key(SECRET_FIELD))
}

/// What a masked read shows of a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MaskedSecret {
    /// Always `true`.
    pub secret: bool,
    /// The keyed fingerprint of the value.
    pub fingerprint: String,
}

impl MaskedSecret {
    /// The mask of stored text that is a secret.
    pub fn of(text: &str) -> Option<Self> {
        StoredSecret::parse(text).map(|s| Self {
            secret: true,
            fingerprint: s.value.fp,
        })
    }
}

/// The JSON of a `"value"` field's value as a read shows it (see [`write_masked`]).
pub fn masked_text(text: &str) -> std::borrow::Cow<'_, str> {
    if !is_sealed_text(text) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut buf = Vec::with_capacity(64);
    write_masked(&mut buf, text);
    std::borrow::Cow::Owned(String::from_utf8(buf).unwrap_or_default())
}

/// A stored value as history and diffs show it: the value, or for a secret the masked object
/// `{"secret": true, "fingerprint": …}`.
pub fn masked_json(value: serde_json::Value) -> serde_json::Value {
    match value.as_object().and_then(|o| o.get(SECRET_FIELD)) {
        Some(inner) => {
            let fp = inner.get("value").and_then(|v| v.get("fp")).cloned();
            serde_json::json!({"secret": true, "fingerprint": fp})
        }
        None => value,
    }
}

/// Appends the JSON of a `"value"` field's value as a read shows it: the value itself, or for
/// a secret `null,"secret":true,"fingerprint":"…"` (the field's value and two more fields).
pub fn write_masked(buf: &mut Vec<u8>, text: &str) {
    if !is_sealed_text(text) {
        buf.extend_from_slice(text.as_bytes());
        return;
    }
    buf.extend_from_slice(b"null,\"secret\":true,\"fingerprint\":");
    let fp = StoredSecret::parse(text)
        .map(|s| s.value.fp)
        .unwrap_or_default();
    buf.push(b'"');
    // A fingerprint is hex; anything else stored there is dropped rather than escaped.
    buf.extend(fp.bytes().filter(u8::is_ascii_hexdigit));
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Address;
    use crate::secrets::{DataKey, open, seal};

    fn stored() -> StoredSecret {
        let a = Address::parse("pay", "prod", "db.password").unwrap();
        StoredSecret {
            value: seal(
                &DataKey::from_bytes([1; 32]),
                1,
                &a,
                2,
                [0; 12],
                b"\"hunter2\"",
                &[9; 32],
            ),
            previous: None,
            updated_ms: 1_000,
            rotate_every_s: Some(60),
            expires_at_ms: Some(500_000),
        }
    }

    #[test]
    fn the_stored_form_round_trips_and_masks_without_the_value() {
        let s = stored();
        let text = s.to_text();
        assert!(is_sealed_text(&text), "{text}");
        assert!(!text.contains("hunter2"));
        assert_eq!(StoredSecret::parse(&text), Some(s.clone()));
        let a = Address::parse("pay", "prod", "db.password").unwrap();
        assert_eq!(
            open(&DataKey::from_bytes([1; 32]), &s.value, &a, 2).unwrap(),
            b"\"hunter2\""
        );
        let mut buf = b"{\"value\":".to_vec();
        write_masked(&mut buf, &text);
        buf.push(b'}');
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["value"], serde_json::Value::Null);
        assert_eq!(v["secret"], true);
        assert_eq!(v["fingerprint"], s.value.fp.as_str());
        let mut plain = Vec::new();
        write_masked(&mut plain, "{\"a\":1}");
        assert_eq!(plain, b"{\"a\":1}");
        assert!(is_reserved_value(
            &serde_json::json!({"$secret": 1, "a": 2})
        ));
        assert!(!is_reserved_value(&serde_json::json!({"secret": 1})));
        assert_eq!(StoredSecret::parse(r#"{"$secret":1}"#), None);
    }

    #[test]
    fn due_and_expiry_follow_the_clock() {
        let s = stored();
        assert_eq!(s.due(60_999), None);
        assert_eq!(s.due(61_000), Some(Due::Rotation));
        assert_eq!(s.due(500_000), Some(Due::Expired));
        let mut with_previous = s.clone();
        with_previous.previous = Some(Previous {
            value: s.value.clone(),
            until_ms: 2_000,
        });
        assert!(with_previous.previous_at(1_999).is_some());
        assert!(with_previous.previous_at(2_000).is_none());
    }
}
