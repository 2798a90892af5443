//! Committed flag exposure counts: one record per `(app, env, flag, variant, edge, boot)` under
//! [`EXPOSURE_PREFIX`], applied by maximum (`Command::Exposures`), so a count committed twice,
//! or by two origin nodes that both heard it, counts once; and the totals read back from them.

use meridian_protocol::flags::exposure::{
    ExposureCount, ExposureKey, ExposureLedger, ExposureTotals, Source,
};
use serde::{Deserialize, Serialize};

/// Where committed counts live.
pub const EXPOSURE_PREFIX: [u8; 2] = [meridian_store::EXTRA_PREFIX, b'e'];
/// Most counts one [`Command::Exposures`](crate::apply::Command::Exposures) carries.
pub const MAX_EXPOSURES_PER_COMMAND: usize = 1000;
/// Longest name in a committed count (an edge id, region, app, env, flag or variant).
pub const MAX_EXPOSURE_NAME_BYTES: usize = 128;

/// One count as committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposureEntry {
    /// The edge and boot that counted.
    pub source: Source,
    /// The edge's region.
    pub region: String,
    /// What, and how many since that boot.
    pub count: ExposureCount,
}

impl ExposureEntry {
    /// The store key: `prefix app 0 env 0 flag 0 variant 0 edge 0 boot(8, big-endian)`, so
    /// one flag's counts are one range.
    pub fn store_key(&self) -> Vec<u8> {
        let k = &self.count.key;
        let mut out = flag_prefix(&k.app, &k.env, &k.flag);
        out.extend_from_slice(k.variant.as_bytes());
        out.push(0);
        out.extend_from_slice(self.source.edge.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.source.boot.to_be_bytes());
        out
    }

    /// The stored value: the count (8, big-endian) then the region.
    pub fn store_value(&self) -> Vec<u8> {
        let mut v = self.count.count.to_be_bytes().to_vec();
        v.extend_from_slice(self.region.as_bytes());
        v
    }

    /// Whether every name is within bounds and free of the separator.
    pub fn is_admissible(&self) -> bool {
        let k = &self.count.key;
        [
            &k.app,
            &k.env,
            &k.flag,
            &k.variant,
            &self.source.edge,
            &self.region,
        ]
        .iter()
        .all(|s| s.len() <= MAX_EXPOSURE_NAME_BYTES && !s.contains('\0'))
    }
}

/// The start of the store keys of one flag's counts.
pub fn flag_prefix(app: &str, env: &str, flag: &str) -> Vec<u8> {
    let mut out = EXPOSURE_PREFIX.to_vec();
    for part in [app, env, flag] {
        out.extend_from_slice(part.as_bytes());
        out.push(0);
    }
    out
}

/// The count stored under a key, if any.
pub fn stored_count(value: &[u8]) -> u64 {
    value
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes)
}

/// The totals of one flag from its stored `(key, value)` records.
pub fn totals(app: &str, env: &str, flag: &str, records: &[(Vec<u8>, Vec<u8>)]) -> ExposureTotals {
    let prefix = flag_prefix(app, env, flag);
    let mut ledger = ExposureLedger::default();
    for (k, v) in records {
        let Some(rest) = k.strip_prefix(prefix.as_slice()) else {
            continue;
        };
        let mut parts = rest.splitn(3, |b| *b == 0);
        let (Some(variant), Some(edge), Some(boot)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(boot) = <[u8; 8]>::try_from(boot) else {
            continue;
        };
        let source = Source {
            edge: String::from_utf8_lossy(edge).into_owned(),
            boot: u64::from_be_bytes(boot),
        };
        let region = String::from_utf8_lossy(v.get(8..).unwrap_or_default()).into_owned();
        let count = ExposureCount {
            key: ExposureKey {
                app: app.to_owned(),
                env: env.to_owned(),
                flag: flag.to_owned(),
                variant: String::from_utf8_lossy(variant).into_owned(),
            },
            count: stored_count(v),
        };
        ledger.merge(&source, &region, [count]);
    }
    ledger.totals(app, env, flag)
}
