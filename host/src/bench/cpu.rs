//! The machine's busy CPU time, from `/proc/stat`: what a run cost in processor time, whoever
//! spent it (the host, PostgreSQL, pgbench). Throughput on a shared machine moves with what
//! the machine's neighbours do; the busy time an operation costs moves much less, so the bench
//! reports both.

/// Clock ticks per second of `/proc/stat` (`USER_HZ`, 100 on Linux whatever the kernel's `HZ`).
const TICKS_PER_SECOND: f64 = 100.0;

/// Busy CPU time so far, all cores together: the machine's, and this process's (the host,
/// with the bench's clients).
#[derive(Debug, Clone, Copy)]
pub struct BusyTime {
    machine: u64,
    process: u64,
}

impl BusyTime {
    /// Reads it now: user, nice, system, irq and softirq ticks (not idle, I/O wait or the time
    /// stolen by the machine's hypervisor). Zero where `/proc/stat` cannot be read.
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks = stat
            .lines()
            .find_map(|line| line.strip_prefix("cpu "))
            .map(|fields| {
                let fields: Vec<u64> = fields.split_whitespace().filter_map(|field| field.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal ...
                [0, 1, 2, 5, 6].iter().filter_map(|&index| fields.get(index)).sum()
            })
            .unwrap_or(0);
        // utime and stime, the 14th and 15th fields, counted after the command's parenthesis.
        let own = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let process = own
            .rsplit_once(')')
            .map(|(_, fields)| fields.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<u64>().ok()).sum())
            .unwrap_or(0);
        Self { machine: ticks, process }
    }

    /// Milliseconds of the machine's busy CPU time since `earlier`, per one of `operations`.
    pub fn ms_per(self, earlier: BusyTime, operations: usize) -> f64 {
        ms(self.machine.saturating_sub(earlier.machine), operations)
    }

    /// Milliseconds of this process's CPU time since `earlier`, per one of `operations`.
    pub fn process_ms_per(self, earlier: BusyTime, operations: usize) -> f64 {
        ms(self.process.saturating_sub(earlier.process), operations)
    }
}

fn ms(ticks: u64, operations: usize) -> f64 {
    ticks as f64 / TICKS_PER_SECOND * 1000.0 / operations.max(1) as f64
}
