//! Files and folders only the service's own user may read: private keys are written with mode
//! 0600 and refused when group or others may read them (as ssh and etcd do), and data folders
//! are created, or narrowed, to 0700.

use std::io;
use std::path::Path;

/// Permission bits that let the group or others in.
const OPEN_TO_OTHERS: u32 = 0o077;

/// Writes `contents` to a new or existing file at `path` with mode 0600.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path)?;
    // The mode applies only when the file is created; an existing one is narrowed too.
    #[cfg(unix)]
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(contents)?;
    file.sync_all()
}

/// The permission bits of `path` that let others in, if any (`None` when it is private).
pub fn open_to_others(path: &Path) -> io::Result<Option<u32>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        Ok((mode & OPEN_TO_OTHERS != 0).then_some(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(None)
    }
}

/// Narrows an existing file at `path` to mode 0600 (for files this program created itself
/// with looser modes in earlier versions).
pub fn narrow_file(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Creates the folder `path` (and its parents) with mode 0700, or narrows it to 0700 if it
/// exists with a looser mode.
pub fn private_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)?;
        if open_to_others(path)?.is_some() {
            tracing::warn!(path = %path.display(), "data folder was open to other users; narrowed to 0700");
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(path)
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn keys_are_written_0600_and_folders_made_0700() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.key");
        std::fs::write(&key, "old").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(open_to_others(&key).unwrap(), Some(0o644));
        write_private(&key, b"secret").unwrap();
        assert_eq!(mode(&key), 0o600);
        assert_eq!(open_to_others(&key).unwrap(), None);

        let data = dir.path().join("a/b");
        private_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
    }
}
