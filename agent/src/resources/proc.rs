//! Parsers for `/proc/stat` and `/proc/meminfo` (proc(5)). Pure: they take the file's text.

/// Cumulative CPU time of the `cpu` line of `/proc/stat`, in USER_HZ ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

/// The aggregate `cpu` line: `cpu user nice system idle iowait irq softirq steal guest guest_nice`.
/// Idle time is `idle + iowait`; guest time is already counted in user (proc(5)), so it is skipped.
pub fn parse_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 4 {
        return None;
    }
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    let total: u64 = v.iter().sum();
    Some(CpuTimes {
        busy: total - idle,
        total,
    })
}

/// Share of CPU time spent busy between two readings, 0..=1; `None` if no time passed.
pub fn cpu_load(prev: CpuTimes, now: CpuTimes) -> Option<f64> {
    let total = now.total.checked_sub(prev.total)?;
    let busy = now.busy.checked_sub(prev.busy)?;
    (total > 0).then(|| (busy as f64 / total as f64).clamp(0.0, 1.0))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub total_mb: u64,
    /// `MemAvailable`: what new processes (and VMs) can get without swapping.
    pub available_mb: u64,
}

/// `MemTotal` and `MemAvailable` (kernels before 3.14 lack it: `MemFree + Buffers + Cached`).
pub fn parse_meminfo(text: &str) -> Option<Memory> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
    };
    let total = field("MemTotal")?;
    let available = field("MemAvailable").or_else(|| {
        Some(field("MemFree")? + field("Buffers").unwrap_or(0) + field("Cached").unwrap_or(0))
    })?;
    Some(Memory {
        total_mb: total / 1024,
        available_mb: available.min(total) / 1024,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests {
    use super::*;

    #[test]
    fn stat_and_load() {
        let a = parse_stat("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n").unwrap();
        assert_eq!(
            a,
            CpuTimes {
                busy: 150,
                total: 1000
            }
        );
        let b = parse_stat("cpu  400 0 50 1100 50 0 0 0 0 0\n").unwrap();
        assert_eq!(cpu_load(a, b), Some(0.5));
        assert_eq!(cpu_load(a, a), None);
        assert_eq!(parse_stat("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse_stat("cpu  1 x 3 4\n"), None);
    }

    #[test]
    fn meminfo() {
        let text = "MemTotal:        2062796 kB\nMemFree:          120000 kB\nMemAvailable:    1536000 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Some(Memory {
                total_mb: 2014,
                available_mb: 1500
            })
        );
        let old =
            "MemTotal: 1048576 kB\nMemFree: 102400 kB\nBuffers: 102400 kB\nCached: 204800 kB\n";
        assert_eq!(parse_meminfo(old).map(|m| m.available_mb), Some(400));
        assert_eq!(parse_meminfo("MemFree: 1 kB\n"), None);
    }
}
