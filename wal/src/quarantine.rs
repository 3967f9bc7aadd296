//! The quarantine: damaged bytes are copied here before the log moves past them, so that no
//! record is ever skipped silently. One `.bin` file per event, named after the segment and
//! offset, with a `.why` file beside it saying what was wrong. The count survives restarts
//! because it is the number of `.bin` files.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Result, WalError};

#[derive(Debug)]
pub(crate) struct Quarantine {
    dir: PathBuf,
}

impl Quarantine {
    pub(crate) fn new(dir: PathBuf) -> Quarantine {
        Quarantine { dir }
    }

    /// Copies `bytes` (found in `segment` at `offset`) to the quarantine. The same damage found
    /// twice (by recovery, then by `verify`) is one file; different bytes at the same place (a
    /// second torn tail after a second crash) are another, because the name carries their CRC.
    pub(crate) fn keep(&self, segment: &Path, offset: u64, bytes: &[u8], reason: &str) -> Result<PathBuf> {
        fs::create_dir_all(&self.dir).map_err(WalError::io(&self.dir))?;
        let stem = segment.file_stem().and_then(|s| s.to_str()).unwrap_or("segment");
        let crc = crc32fast::hash(bytes);
        let path = self.dir.join(format!("{stem}-{offset:012}-{crc:08x}.bin"));
        if !path.exists() {
            fs::write(&path, bytes).map_err(WalError::io(&path))?;
            let why = path.with_extension("why");
            let text = format!(
                "segment {}\noffset {offset}\nbytes {}\nreason {reason}\n",
                segment.display(),
                bytes.len()
            );
            fs::write(&why, text).map_err(WalError::io(&why))?;
            tracing::error!(segment = %segment.display(), offset, bytes = bytes.len(), reason, quarantined = %path.display(), "wal: damaged bytes quarantined");
        }
        Ok(path)
    }

    /// How many damaged regions have been quarantined, ever.
    pub(crate) fn count(&self) -> u64 {
        let Ok(entries) = fs::read_dir(&self.dir) else { return 0 };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "bin"))
            .count() as u64
    }
}
