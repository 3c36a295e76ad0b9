//! The standard `process_*` metrics of Prometheus clients, read from
//! `/proc/self` at each scrape (Linux; elsewhere they are left out).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

#[derive(Debug)]
pub struct Process;

/// What `/proc/self/stat` and friends say about this process.
#[derive(Debug, Clone, PartialEq)]
struct Figures {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    start_time_seconds: f64,
    open_fds: f64,
    max_fds: f64,
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(f) = read() else { return Ok(()) };
        let cpu = ConstCounter::new(f.cpu_seconds);
        let help = "User and system CPU time spent in seconds.";
        cpu.encode(encoder.encode_descriptor("process_cpu_seconds", help, None, cpu.metric_type())?)?;
        for (name, help, value) in [
            ("process_resident_memory_bytes", "Resident memory size in bytes.", f.resident_bytes),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes.", f.virtual_bytes),
            ("process_start_time_seconds", "Start time of the process since the Unix epoch in seconds.", f.start_time_seconds),
            ("process_open_fds", "Number of open file descriptors.", f.open_fds),
            ("process_max_fds", "Maximum number of open file descriptors.", f.max_fds),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

fn read() -> Option<Figures> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    figures(&stat, &boot, &limits, ticks, rustix::param::page_size() as f64, open_fds as f64)
}

/// `stat` is /proc/self/stat (proc(5)): fields after the command's closing
/// parenthesis, starting at field 3 (state); `boot` is /proc/stat (btime).
fn figures(stat: &str, boot: &str, limits: &str, ticks: f64, page: f64, open_fds: f64) -> Option<Figures> {
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    // proc(5) numbers fields from 1; fields[0] is field 3.
    let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    let btime = boot.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse::<f64>().ok()?;
    let max_fds = limits.lines().find(|l| l.starts_with("Max open files"))?.split_whitespace().nth(3)?.parse().ok()?;
    Some(Figures {
        cpu_seconds: (field(14)? + field(15)?) / ticks,
        start_time_seconds: btime + field(22)? / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page,
        open_fds,
        max_fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_come_from_the_documented_fields() {
        // A command with spaces and parentheses: fields count from the last ')'.
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 300 0 0 0 250 50 0 0 20 0 3 0 12300 104857600 2560 18446744073709551615";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(
            figures(stat, boot, limits, 100.0, 4096.0, 7.0),
            Some(Figures {
                cpu_seconds: 3.0,
                resident_bytes: 2560.0 * 4096.0,
                virtual_bytes: 104857600.0,
                start_time_seconds: 1700000123.0,
                open_fds: 7.0,
                max_fds: 1024.0,
            })
        );
        assert_eq!(figures("4242 (x) S 1", boot, limits, 100.0, 4096.0, 7.0), None);
    }
}
