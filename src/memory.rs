//! The process's memory as the kernel counts it, for `/metrics`: its resident set
//! (`/proc/self/status`) and the memory limit of its cgroup (`memory.max`, cgroup v2: the
//! container's `resources.limits.memory`). Their ratio drives the chart's
//! `KratosOperatorMemoryNearLimit` alert: the caches grow with the watched objects, and a
//! process past its limit is OOM-killed in a loop.

/// The resident set size in bytes from the text of `/proc/self/status` (pure): its `VmRSS`
/// line, in kB.
pub fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

/// The limit in bytes from the text of a cgroup v2 `memory.max` (pure): `None` for `max` (no
/// limit) or anything else.
pub fn limit_bytes(memory_max: &str) -> Option<u64> {
    memory_max.trim().parse().ok()
}

/// This process's resident set size, when the kernel says.
pub fn resident() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(resident_bytes)
}

/// This process's cgroup memory limit, when it has one.
pub fn limit() -> Option<u64> {
    std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .as_deref()
        .and_then(limit_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resident_set_is_read_from_vmrss_in_kb() {
        let status =
            "Name:\tkratos-operator\nVmPeak:\t  300000 kB\nVmRSS:\t   46080 kB\nThreads:\t9\n";
        assert_eq!(resident_bytes(status), Some(46080 * 1024));
        assert_eq!(resident_bytes("Name:\tx\n"), None);
        assert!(
            resident().is_some_and(|b| b > 0),
            "this test process has one"
        );
    }

    #[test]
    fn a_limit_is_a_number_and_max_is_none() {
        assert_eq!(limit_bytes("268435456\n"), Some(268_435_456));
        assert_eq!(limit_bytes("max\n"), None);
        assert_eq!(limit_bytes(""), None);
    }
}
