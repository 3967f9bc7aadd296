//! File descriptors held back for the store (spec §14): clients must never be able to take
//! the descriptors the WAL, sled and the log need, or a write fails and the store stops.
//!
//! At start the soft open-file limit is raised to the hard one; the connection cap is then
//! kept below the limit minus a reserve for everything else coreq opens.

/// Descriptors coreq needs whatever its configuration: standard streams, the runtime (epoll,
/// eventfd, the signal pipe), log files, the WAL (active segment, its directory, a reader each
/// for the dispatcher, the mirror and the sim journal), sled (data file, config, blobs,
/// snapshot, directory), checkpoint and quarantine files, with room to spare.
const BASE_RESERVE: u64 = 64;
/// Webhook requests in flight plus idle pooled connections (24 each at most).
const WEBHOOK_SOCKETS: u64 = 48;
/// Below this many connections the open-file limit is too low to serve anything.
pub const MIN_CONNECTIONS: usize = 16;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit in force.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit through a valid pointer. Raising the soft limit up
        // to the hard one needs no privilege; on failure the old limit stays.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Ok(limit.rlim_cur)
}

/// Descriptors held back from connections: the base, the webhook sockets, one per gateway
/// send in flight and the mirror's pool.
pub fn reserve(gateway_concurrency: usize, mirror_pool: u32) -> u64 {
    BASE_RESERVE + WEBHOOK_SOCKETS + gateway_concurrency as u64 + u64::from(mirror_pool)
}

/// The connection cap in force: `configured`, lowered to fit under `open_files - reserve`.
/// `Err` with the room left when that is under [`MIN_CONNECTIONS`].
pub fn connection_cap(configured: usize, open_files: u64, reserve: u64) -> Result<usize, u64> {
    let room = open_files.saturating_sub(reserve);
    if room < MIN_CONNECTIONS as u64 {
        return Err(room);
    }
    Ok(configured.min(usize::try_from(room).unwrap_or(usize::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_stays_under_the_limit_minus_the_reserve() {
        assert_eq!(connection_cap(1024, 256, 146), Ok(110));
        assert_eq!(connection_cap(100, 1 << 20, 146), Ok(100));
    }

    #[test]
    fn a_limit_that_leaves_too_little_room_is_refused() {
        assert_eq!(connection_cap(1024, 150, 146), Err(4));
    }

    #[test]
    fn raising_keeps_at_least_the_limit_in_force() {
        let mut before = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in raise_open_file_limit.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut before) }, 0);
        assert!(raise_open_file_limit().unwrap() >= before.rlim_cur);
    }
}
