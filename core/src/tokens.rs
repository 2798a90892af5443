//! Where an origin node keeps the time each token was last used (`Command::TouchTokens`):
//! outside the signed state, one record per token id.

/// Where the time a token was last used (at an origin node) is kept: this prefix and its id.
pub const LAST_USED_PREFIX: [u8; 2] = [meridian_store::EXTRA_PREFIX, b't'];
/// Most tokens one [`Command::TouchTokens`](crate::apply::Command::TouchTokens) names.
pub const MAX_TOUCHES: usize = 1000;

/// The key of token `id`'s last use.
pub fn last_used_key(id: u64) -> Vec<u8> {
    let mut k = LAST_USED_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}
