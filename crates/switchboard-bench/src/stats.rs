//! Latency percentiles and `/proc` readings: CPU time (utime+stime) and RSS
//! of the server under test, the generator's own CPU, listen-queue drops.

use std::time::Instant;

/// Clock ticks per second for `/proc/PID/stat`.
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// CPU seconds (user + system) a process has used, or `None` if unreadable.
pub fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clk_tck())
}

/// Resident set size in KiB (`VmRSS`), or `None` if unreadable.
pub fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The box-wide `TcpExt` counters `ListenOverflows` + `ListenDrops`.
pub fn listen_drops() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines();
    while let Some(names) = lines.next() {
        let values = lines.next()?;
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let mut total = 0;
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if name == "ListenOverflows" || name == "ListenDrops" {
                total += value.parse::<u64>().ok()?;
            }
        }
        return Some(total);
    }
    None
}

/// CPU and wall time over one measurement.
#[derive(Debug, Clone)]
pub struct Probe {
    server: Option<String>,
    server_cpu0: Option<f64>,
    gen_cpu0: Option<f64>,
    t0: Instant,
}

/// What a [`Probe`] measured.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Wall seconds.
    pub wall: f64,
    /// Server CPU seconds, if its PID was given.
    pub server_cpu: Option<f64>,
    /// This process's CPU seconds (all threads).
    pub gen_cpu: Option<f64>,
}

impl Probe {
    /// Starts measuring (the server's PID is optional).
    pub fn start(server: Option<&str>) -> Probe {
        Probe {
            server: server.map(str::to_owned),
            server_cpu0: server.and_then(cpu_secs),
            gen_cpu0: cpu_secs("self"),
            t0: Instant::now(),
        }
    }

    /// The usage since [`Probe::start`].
    pub fn finish(&self) -> Usage {
        let wall = self.t0.elapsed().as_secs_f64();
        let server_cpu = match (&self.server, self.server_cpu0) {
            (Some(pid), Some(c0)) => cpu_secs(pid).map(|c| c - c0),
            _ => None,
        };
        let gen_cpu = match self.gen_cpu0 {
            Some(c0) => cpu_secs("self").map(|c| c - c0),
            None => None,
        };
        Usage { wall, server_cpu, gen_cpu }
    }
}

/// Latency samples in nanoseconds.
#[derive(Debug, Default, Clone)]
pub struct Latencies(pub Vec<u64>);

impl Latencies {
    /// The `p`-th percentile (0..=100) in microseconds, or `None` if empty.
    pub fn percentile_us(&mut self, p: f64) -> Option<f64> {
        if self.0.is_empty() {
            return None;
        }
        self.0.sort_unstable();
        let rank = ((p / 100.0) * (self.0.len() - 1) as f64).round() as usize;
        Some(self.0[rank.min(self.0.len() - 1)] as f64 / 1000.0)
    }

    /// The largest sample in microseconds.
    pub fn max_us(&self) -> Option<f64> {
        self.0.iter().max().map(|&n| n as f64 / 1000.0)
    }
}

/// Rounds for JSON: 3 significant decimals is plenty for noisy numbers.
pub fn round(x: f64) -> f64 {
    if x.abs() >= 100.0 {
        x.round()
    } else {
        (x * 1000.0).round() / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_proc() {
        assert!(cpu_secs("self").is_some());
        assert!(rss_kib("self").is_some_and(|k| k > 0));
    }

    #[test]
    fn percentiles() {
        let mut l = Latencies((1..=100).map(|n| n * 1000).collect());
        assert_eq!(l.percentile_us(50.0), Some(51.0));
        assert_eq!(l.percentile_us(99.0), Some(99.0));
    }
}
