//! How much memory a local match may count on, for `--shards auto`: the smaller of
//! what the kernel says is available (`MemAvailable` in `/proc/meminfo`) and what
//! the process's control group still allows (`memory.max − memory.current` under
//! cgroup v2, `memory.limit_in_bytes − memory.usage_in_bytes` under v1), so that a
//! container's limit counts, not the host's free memory. `None` where neither can be
//! read (not Linux): the caller then sizes shards by the input alone.

use std::path::Path;

/// Bytes this process can expect to allocate without swapping or being killed.
pub fn available() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(Path::new(path)).ok();
    let host = read("/proc/meminfo").and_then(|text| mem_available(&text));
    let cgroup_v2 = cgroup_headroom(read("/sys/fs/cgroup/memory.max"), read("/sys/fs/cgroup/memory.current"));
    let cgroup_v1 = cgroup_headroom(
        read("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
        read("/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    );
    [host, cgroup_v2, cgroup_v1].into_iter().flatten().min()
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|line| line.strip_prefix("MemAvailable:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// A control group's limit less its usage; `None` without a limit (`max`, or v1's
/// "unlimited", a number near `u64::MAX`) or where either cannot be read.
fn cgroup_headroom(limit: Option<String>, usage: Option<String>) -> Option<u64> {
    let limit: u64 = limit?.trim().parse().ok()?;
    if limit >= 1 << 60 {
        return None;
    }
    let usage: u64 = usage?.trim().parse().ok()?;
    Some(limit.saturating_sub(usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_available_in_bytes() {
        let meminfo = "MemTotal:       24633040 kB\nMemFree:        22000000 kB\nMemAvailable:   24089724 kB\n";
        assert_eq!(mem_available(meminfo), Some(24_089_724 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: lots\n"), None);
    }

    #[test]
    fn a_cgroup_limit_counts_only_when_there_is_one() {
        let s = |t: &str| Some(t.to_owned());
        assert_eq!(cgroup_headroom(s("536870912\n"), s("136870912\n")), Some(400_000_000));
        assert_eq!(cgroup_headroom(s("max\n"), s("136870912\n")), None);
        assert_eq!(cgroup_headroom(s("9223372036854771712\n"), s("1\n")), None, "v1's unlimited");
        assert_eq!(cgroup_headroom(s("100\n"), s("200\n")), Some(0));
        assert_eq!(cgroup_headroom(s("100\n"), None), None);
        assert!(available().is_some(), "this is Linux: /proc/meminfo is there");
    }
}
