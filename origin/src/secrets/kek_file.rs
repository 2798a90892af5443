//! The local key-encryption key file: JSON `{"keys": [{"id", "key"}]}` with base64 keys, the
//! last one current, readable by its owner only (0600; a file others may read is refused).
//! `meridian secret init-keys` makes one; `meridian secret rotate-key --kek` appends a key.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use meridian_protocol::secrets::LocalKeks;
use rand_core::RngCore as _;
use serde::{Deserialize, Serialize};

/// Most keys one file may hold.
pub const MAX_KEKS: usize = 64;

/// Why the key file could not be used. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KekFileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Others than its owner may read it.
    #[error("{0}: key file must be readable by its owner only (chmod 600)")]
    Permissions(PathBuf),
    /// It is not a key file.
    #[error("{path}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KekFile {
    keys: Vec<KekEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KekEntry {
    id: String,
    key: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KekFileError + '_ {
    move |source| KekFileError::Io {
        path: path.to_owned(),
        source,
    }
}

fn invalid(path: &Path, why: impl Into<String>) -> KekFileError {
    KekFileError::Invalid {
        path: path.to_owned(),
        why: why.into(),
    }
}

fn read(path: &Path) -> Result<KekFile, KekFileError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path)
            .map_err(io(path))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(KekFileError::Permissions(path.to_owned()));
        }
    }
    let text = std::fs::read(path).map_err(io(path))?;
    let file: KekFile = serde_json::from_slice(&text)
        .map_err(|e| invalid(path, format!("not a key file ({})", e.classify_name())))?;
    if file.keys.is_empty() || file.keys.len() > MAX_KEKS {
        return Err(invalid(path, format!("must hold 1 to {MAX_KEKS} keys")));
    }
    Ok(file)
}

trait Classify {
    fn classify_name(&self) -> &'static str;
}

impl Classify for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        // The message of a JSON error may quote the input, which is key material.
        match self.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected fields",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// Loads the keys of `path`.
pub fn load(path: &Path) -> Result<LocalKeks, KekFileError> {
    let file = read(path)?;
    let mut keys = Vec::with_capacity(file.keys.len());
    for e in file.keys {
        let key = B64
            .decode(e.key.as_bytes())
            .ok()
            .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
            .ok_or_else(|| invalid(path, format!("key {:?} is not 32 bytes of base64", e.id)))?;
        if e.id.is_empty() || e.id.len() > 64 || keys.iter().any(|(id, _)| *id == e.id) {
            return Err(invalid(path, "key ids must be unique, 1 to 64 bytes"));
        }
        keys.push((e.id, key));
    }
    LocalKeks::new(keys).ok_or_else(|| invalid(path, "no keys"))
}

fn write(path: &Path, file: &KekFile) -> Result<(), KekFileError> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp).map_err(io(&tmp))?;
    let text = serde_json::to_vec_pretty(file).map_err(|e| invalid(path, e.to_string()))?;
    f.write_all(&text).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn fresh_key() -> String {
    let mut key = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut key);
    B64.encode(key)
}

/// Makes a key file holding one new key (`kek-1`); refuses to replace an existing file.
pub fn create(path: &Path) -> Result<String, KekFileError> {
    if path.exists() {
        return Err(invalid(path, "already exists"));
    }
    write(
        path,
        &KekFile {
            keys: vec![KekEntry {
                id: "kek-1".into(),
                key: fresh_key(),
            }],
        },
    )?;
    Ok("kek-1".into())
}

/// Appends a new key, which becomes current; returns its id. Older keys stay, so data keys
/// wrapped by them still unwrap until every one is rewrapped.
pub fn add_key(path: &Path) -> Result<String, KekFileError> {
    let mut file = read(path)?;
    if file.keys.len() >= MAX_KEKS {
        return Err(invalid(path, format!("holds {MAX_KEKS} keys already")));
    }
    let mut n = file.keys.len() + 1;
    while file.keys.iter().any(|k| k.id == format!("kek-{n}")) {
        n += 1;
    }
    let id = format!("kek-{n}");
    file.keys.push(KekEntry {
        id: id.clone(),
        key: fresh_key(),
    });
    write(path, &file)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use meridian_protocol::secrets::KeyProvider as _;

    use super::*;

    #[test]
    fn a_key_file_is_private_and_keeps_older_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.json");
        assert_eq!(create(&path).unwrap(), "kek-1");
        assert!(create(&path).is_err(), "never replaced");
        assert_eq!(load(&path).unwrap().current(), "kek-1");
        assert_eq!(add_key(&path).unwrap(), "kek-2");
        let keks = load(&path).unwrap();
        assert_eq!(keks.current(), "kek-2");
        assert!(keks.holds("kek-1"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(load(&path), Err(KekFileError::Permissions(_))));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let secret_text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, secret_text.replace("\"keys\"", "\"keyz\"")).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(
            !err.contains("=") && err.contains("unexpected fields"),
            "{err}"
        );
    }
}
