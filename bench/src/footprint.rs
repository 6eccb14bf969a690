//! The broker's footprint, read from /proc: resident memory (`VmRSS` in
//! /proc/PID/status) and CPU time (utime + stime in /proc/PID/stat). Only the given
//! process is read, never its children. Parsing is pure; [`BrokerProcess`] does the reads.

use anyhow::Context;
use std::path::PathBuf;

/// Bytes in a MiB, for reports.
pub const MIB: f64 = 1024.0 * 1024.0;

/// A process whose footprint is sampled.
#[derive(Debug, Clone)]
pub struct BrokerProcess {
    pid: u32,
    ticks_per_second: u64,
}

impl BrokerProcess {
    /// Checks that the process exists and can be read.
    pub fn open(pid: u32) -> anyhow::Result<BrokerProcess> {
        // SAFETY: sysconf has no preconditions; it only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let process =
            BrokerProcess { pid, ticks_per_second: u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100) };
        process.rss_bytes().with_context(|| format!("failed to read the footprint of broker process {pid}"))?;
        Ok(process)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resident memory now.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let path = self.proc_file("status");
        let text = std::fs::read_to_string(&path).with_context(|| format!("failed to read {}", path.display()))?;
        parse_vm_rss(&text).with_context(|| format!("no VmRSS line in {}", path.display()))
    }

    /// CPU time used so far (user + system), in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let path = self.proc_file("stat");
        let text = std::fs::read_to_string(&path).with_context(|| format!("failed to read {}", path.display()))?;
        let ticks = parse_cpu_ticks(&text).with_context(|| format!("unexpected format of {}", path.display()))?;
        Ok(ticks as f64 / self.ticks_per_second as f64)
    }

    fn proc_file(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{name}", self.pid))
    }
}

/// `VmRSS:   123456 kB` → bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => value.checked_mul(1024),
        Some(_) => None,
    }
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line, in clock ticks. The
/// command name (field 2) may contain spaces and parentheses, so fields are counted from
/// the last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name come field 3 (state) onwards: utime is the 12th of those.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Running statistics of RSS samples taken under load.
#[derive(Debug, Default, Clone, Copy)]
pub struct RssStats {
    peak: u64,
    sum: u128,
    samples: u64,
}

impl RssStats {
    pub fn add(&mut self, bytes: u64) {
        self.peak = self.peak.max(bytes);
        self.sum += u128::from(bytes);
        self.samples += 1;
    }

    pub fn peak_mib(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.peak as f64 / MIB)
    }

    pub fn mean_mib(&self) -> Option<f64> {
        (self.samples > 0).then(|| (self.sum / u128::from(self.samples)) as f64 / MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_status_file_should_read_vm_rss_in_bytes() {
        let status = "Name:\tduomq-broker\nVmPeak:\t  900000 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("Name:\tzombie\n"), None);
    }

    #[test]
    fn given_stat_line_with_odd_name_should_sum_utime_and_stime() {
        let stat = "4242 (beam.smp) (x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 30 0 123 456 789";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn given_samples_should_report_peak_and_mean() {
        let mut stats = RssStats::default();
        assert_eq!(stats.peak_mib(), None);
        stats.add(1024 * 1024);
        stats.add(3 * 1024 * 1024);
        assert_eq!(stats.peak_mib(), Some(3.0));
        assert_eq!(stats.mean_mib(), Some(2.0));
    }

    #[test]
    fn given_own_pid_should_read_footprint() -> anyhow::Result<()> {
        let me = BrokerProcess::open(std::process::id())?;
        assert!(me.rss_bytes()? > 0);
        assert!(me.cpu_seconds()? >= 0.0);
        Ok(())
    }
}
