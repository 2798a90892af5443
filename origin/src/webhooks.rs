//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): every delivery carries
//! `webhook-id` (the event's idempotency id), `webhook-timestamp` (Unix seconds) and
//! `webhook-signature` (`v1,` and the base64 HMAC-SHA256, under the subscription's secret,
//! of `id.timestamp.body`), so any Standard Webhooks library verifies Meridian's deliveries.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;

/// How a secret is written: `whsec_` and the base64 of its bytes.
pub const SECRET_PREFIX: &str = "whsec_";
/// How far a delivery's timestamp may be from the receiver's clock (the specification's
/// recommendation), in seconds.
pub const DEFAULT_TOLERANCE_S: u64 = 5 * 60;

/// A subscription's signing secret (24 to 64 bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(…)")
    }
}

/// Why a secret or a delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// Not `whsec_` and base64 of 24 to 64 bytes.
    #[error("a webhook secret is whsec_ followed by the base64 of 24 to 64 bytes")]
    Secret,
    /// The timestamp is not Unix seconds, or too far from now.
    #[error("the webhook timestamp is missing, malformed or more than {0} s away")]
    Timestamp(u64),
    /// No `v1` signature matched.
    #[error("no signature matches")]
    Signature,
}

impl WebhookSecret {
    /// A fresh random secret of 32 bytes.
    pub fn generate() -> Self {
        use rand_core::RngCore;
        let mut bytes = vec![0u8; 32];
        rand_core::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Self, WebhookError> {
        let b64 = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(WebhookError::Secret)?;
        let bytes = STANDARD.decode(b64).map_err(|_| WebhookError::Secret)?;
        if !(24..=64).contains(&bytes.len()) {
            return Err(WebhookError::Secret);
        }
        Ok(Self(bytes))
    }

    /// `whsec_<base64>`.
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }

    fn key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.0)
    }
}

fn content(id: &str, timestamp_s: u64, body: &[u8]) -> Vec<u8> {
    let mut c = Vec::with_capacity(id.len() + 24 + body.len());
    c.extend_from_slice(id.as_bytes());
    c.push(b'.');
    c.extend_from_slice(timestamp_s.to_string().as_bytes());
    c.push(b'.');
    c.extend_from_slice(body);
    c
}

/// The `webhook-signature` value of a delivery of `body` as message `id` at `timestamp_s`.
pub fn sign(secret: &WebhookSecret, id: &str, timestamp_s: u64, body: &[u8]) -> String {
    let tag = hmac::sign(&secret.key(), &content(id, timestamp_s, body));
    format!("v1,{}", STANDARD.encode(tag.as_ref()))
}

/// Checks a delivery as a receiver does: the timestamp within `tolerance_s` of `now_s`, and
/// one of the space-separated `v1` signatures made with `secret` (compared in constant time).
pub fn verify(
    secret: &WebhookSecret,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now_s: u64,
    tolerance_s: u64,
) -> Result<(), WebhookError> {
    let ts: u64 = timestamp
        .parse()
        .map_err(|_| WebhookError::Timestamp(tolerance_s))?;
    if ts.abs_diff(now_s) > tolerance_s {
        return Err(WebhookError::Timestamp(tolerance_s));
    }
    let signed = content(id, ts, body);
    let key = secret.key();
    let matches = signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .any(|tag| hmac::verify(&key, &signed, &tag).is_ok());
    if matches {
        Ok(())
    } else {
        Err(WebhookError::Signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The reference vector published with the Standard Webhooks specification.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: u64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_the_specification_vector() {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        assert_eq!(sign(&secret, ID, TS, BODY), SIGNATURE);
        assert_eq!(secret.to_text(), SECRET);
    }

    #[test]
    fn verifies_as_a_receiver_does() {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        let ok = |sigs: &str, body: &[u8], now: u64| {
            verify(
                &secret,
                ID,
                &TS.to_string(),
                sigs,
                body,
                now,
                DEFAULT_TOLERANCE_S,
            )
        };
        assert_eq!(ok(SIGNATURE, BODY, TS), Ok(()));
        // One of several (during a secret rotation).
        assert_eq!(
            ok(&format!("v1,bm9wZQ== {SIGNATURE}"), BODY, TS + 60),
            Ok(())
        );
        assert_eq!(
            ok(SIGNATURE, br#"{"test": 2432232315}"#, TS),
            Err(WebhookError::Signature)
        );
        assert_eq!(
            ok(SIGNATURE, BODY, TS + 301),
            Err(WebhookError::Timestamp(300))
        );
        let other = WebhookSecret::generate();
        assert_eq!(
            verify(&other, ID, &TS.to_string(), SIGNATURE, BODY, TS, 300),
            Err(WebhookError::Signature)
        );
        assert_eq!(format!("{other:?}"), "WebhookSecret(…)", "never printed");
    }

    #[test]
    fn secrets_are_checked() {
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_!!!",
            "whsec_AAAA",
        ] {
            assert_eq!(
                WebhookSecret::parse(bad),
                Err(WebhookError::Secret),
                "{bad}"
            );
        }
        let fresh = WebhookSecret::generate();
        assert_eq!(WebhookSecret::parse(&fresh.to_text()), Ok(fresh));
    }
}
