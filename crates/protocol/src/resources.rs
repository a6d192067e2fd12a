//! What a process cost: its peak resident memory, reported by each binary so that a
//! run's memory is part of its result rather than a separate measurement.

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
}
