//! What a process may use and what it cost: the open-file limit the broker and the
//! publisher raise (one socket per client or device), and the peak resident memory each
//! binary reports, so that a run's memory is part of its result rather than a separate
//! measurement.

/// Lifts this process's soft limit on open files to its hard limit (1,024 by default on
/// many systems, far below what a thousand connections need) and returns the limit now
/// in force, if the OS says.
pub fn raise_open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write only the struct we pass.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return None;
            }
            if limit.rlim_cur < limit.rlim_max {
                limit.rlim_cur = limit.rlim_max;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    let _ = libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
                }
            }
        }
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every unix
        Some(limit.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Peak resident set size of this process in KiB, if the OS says.
pub fn peak_rss_kib() -> Option<u64> {
    #[cfg(unix)]
    {
        // SAFETY: getrusage only writes into the zeroed struct we hand it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
        // Linux reports ru_maxrss in KiB.
        (rc == 0).then_some(usage.ru_maxrss as u64)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn peak_rss_is_plausible() {
        let kib = super::peak_rss_kib().unwrap();
        assert!((100..10_000_000).contains(&kib), "{kib} KiB");
    }

    #[test]
    fn raising_the_open_file_limit_says_what_is_in_force() {
        let now = super::raise_open_file_limit().unwrap();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        #[allow(clippy::unnecessary_cast)]
        let current = limit.rlim_cur as u64;
        assert_eq!(now, current);
        assert!(now >= 256, "{now}");
    }
}
