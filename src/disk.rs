//! Free space on the volumes coreq writes to. Below the configured minimum (10 MiB by default)
//! writes are refused with 507/1014 before they reach the WAL, so a full disk degrades to a
//! read-only service instead of a poisoned log.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Bytes available to an unprivileged writer on the file system holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let c_path =
        CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` points to writable memory
    // of the right type; statvfs fills it completely when it returns 0.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: rc == 0, so statvfs initialised the struct.
    let stat = unsafe { stat.assume_init() };
    // Both fields are u64 on the 64-bit Linux targets we build for.
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// The volumes that must keep room for writes, and how much.
#[derive(Debug, Clone)]
pub struct SpaceGuard {
    volumes: Vec<(&'static str, PathBuf)>,
    min_free: u64,
}

/// A volume under the minimum (or one whose free space cannot be read, which is treated the
/// same: better to refuse a write than to poison the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LowSpace {
    pub volume: &'static str,
    pub min_free: u64,
}

impl SpaceGuard {
    pub fn new(data_dir: &Path, log_dir: &Path, min_free: u64) -> SpaceGuard {
        SpaceGuard {
            volumes: vec![("data", data_dir.to_owned()), ("logs", log_dir.to_owned())],
            min_free,
        }
    }

    /// Ok while every volume has at least the minimum free.
    pub fn check(&self) -> Result<(), LowSpace> {
        for (volume, path) in &self.volumes {
            match free_bytes(path) {
                Ok(free) if free >= self.min_free => {}
                _ => {
                    return Err(LowSpace {
                        volume,
                        min_free: self.min_free,
                    });
                }
            }
        }
        Ok(())
    }

    /// Free bytes per volume (`data`, `logs`); 0 where it cannot be read.
    pub fn free(&self) -> Vec<(&'static str, u64)> {
        self.volumes
            .iter()
            .map(|(volume, path)| (*volume, free_bytes(path).unwrap_or(0)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temporary_directory_has_some_free_space() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(free_bytes(dir.path()).expect("statvfs") > 0);
    }

    #[test]
    fn a_missing_path_is_an_error_not_zero() {
        assert!(free_bytes(Path::new("/no/such/coreq/path")).is_err());
    }

    #[test]
    fn a_minimum_above_the_free_space_names_the_first_short_volume() {
        let dir = tempfile::tempdir().expect("tempdir");
        let guard = SpaceGuard::new(dir.path(), dir.path(), u64::MAX);
        assert_eq!(
            guard.check(),
            Err(LowSpace {
                volume: "data",
                min_free: u64::MAX
            })
        );
        assert!(SpaceGuard::new(dir.path(), dir.path(), 0).check().is_ok());
    }
}
