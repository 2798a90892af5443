//! Laws of sealed secrets: any value sealed at an address and version opens to itself there
//! and nowhere else, and any single flipped bit of the ciphertext is refused, never returned as
//! other bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use meridian_protocol::Address;
use meridian_protocol::secrets::{DataKey, SecretError, open, seal};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn sealed_values_open_only_where_they_were_sealed(
        plaintext in proptest::collection::vec(any::<u8>(), 0..512),
        key in any::<[u8; 32]>(),
        nonce in any::<[u8; 12]>(),
        version in 1u64..1_000,
        name in "[a-z][a-z0-9]{0,10}",
        other in "[a-z][a-z0-9]{0,10}",
        flip in any::<prop::sample::Index>(),
    ) {
        let key = DataKey::from_bytes(key);
        let here = Address::parse("pay", "prod", &name).unwrap();
        let sealed = seal(&key, 1, &here, version, nonce, &plaintext, &[0; 32]);
        prop_assert_eq!(open(&key, &sealed, &here, version).unwrap(), plaintext);
        if other != name {
            let there = Address::parse("pay", "prod", &other).unwrap();
            prop_assert_eq!(open(&key, &sealed, &there, version), Err(SecretError::Tampered));
        }
        prop_assert_eq!(open(&key, &sealed, &here, version + 1), Err(SecretError::Tampered));
        let mut ct = B64.decode(&sealed.ct).unwrap();
        let bit = flip.index(ct.len() * 8);
        ct[bit / 8] ^= 1 << (bit % 8);
        let mut bad = sealed.clone();
        bad.ct = B64.encode(ct);
        prop_assert_eq!(open(&key, &bad, &here, version), Err(SecretError::Tampered));
    }
}
