//! CPU time of a process, shared by the benchmarks.

/// CPU time `pid` has used, summed over its threads, in seconds: the
/// scheduler's nanosecond count (/proc/…/stat counts 10 ms ticks, too
/// coarse for short runs).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let on_cpu = |thread: std::fs::DirEntry| -> Option<u64> {
        let stat = std::fs::read_to_string(thread.path().join("schedstat")).ok()?;
        stat.split_whitespace().next()?.parse().ok()
    };
    Some(threads.filter_map(|t| on_cpu(t.ok()?)).sum::<u64>() as f64 / 1e9)
}
