//! Memory and CPU of the processes under test, from `/proc`, plus the fd limit.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Resident set size in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kb(&text, "VmRSS:").map(|kb| kb * 1024)
}

/// Peak resident set size in bytes (`VmHWM`).
pub fn hwm_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kb(&text, "VmHWM:").map(|kb| kb * 1024)
}

fn parse_status_kb(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// User + system CPU seconds (`utime` + `stime` of `/proc/<pid>/stat`).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ticks(&text).map(|t| t as f64 / clock_ticks())
}

fn parse_stat_ticks(text: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the man page, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU seconds of this process (the harness itself).
pub fn self_cpu_secs() -> f64 {
    cpu_secs(std::process::id()).unwrap_or(0.0)
}

/// Raises `RLIMIT_NOFILE` as high as allowed (children inherit it). Returns the new soft limit.
// `rlim_t` is not u64 on every target.
#[allow(clippy::unnecessary_cast)]
pub fn raise_fd_limit(want: u64) -> u64 {
    // SAFETY: plain get/setrlimit on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur >= want as libc::rlim_t {
            return lim.rlim_cur as u64;
        }
        // Root may raise the hard limit too (up to fs.nr_open).
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(want);
        let target = want.min(nr_open) as libc::rlim_t;
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: target.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return target as u64;
        }
        let soft = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 {
            return lim.rlim_max as u64;
        }
        lim.rlim_cur as u64
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    pub t_secs: f64,
    pub rss_bytes: u64,
    pub cpu_secs: f64,
    /// CPU seconds of the system's redis-server processes (its Redis, or every
    /// primary of its Redis Cluster), kept apart from the nodes' `cpu_secs`.
    pub redis_cpu_secs: f64,
}

/// Samples the summed RSS and CPU of a set of processes every `every`, and
/// the summed CPU of the system's redis-server processes apart.
#[derive(Clone)]
pub struct Sampler {
    pids: Arc<Vec<u32>>,
    redis_pids: Arc<Vec<u32>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    origin: Instant,
}

impl Sampler {
    pub fn start(
        pids: Vec<u32>,
        redis_pids: Vec<u32>,
        origin: Instant,
        every: Duration,
    ) -> Sampler {
        let s = Sampler {
            pids: Arc::new(pids),
            redis_pids: Arc::new(redis_pids),
            samples: Arc::new(Mutex::new(Vec::new())),
            origin,
        };
        if !s.pids.is_empty() {
            let bg = s.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    let now = bg.now();
                    bg.samples.lock().unwrap().push(now);
                    if Arc::strong_count(&bg.samples) == 1 {
                        break;
                    }
                }
            });
        }
        s
    }

    /// A fresh reading (not stored).
    pub fn now(&self) -> Sample {
        Sample {
            t_secs: self.origin.elapsed().as_secs_f64(),
            rss_bytes: self.pids.iter().filter_map(|&p| rss_bytes(p)).sum(),
            cpu_secs: self.pids.iter().filter_map(|&p| cpu_secs(p)).sum(),
            redis_cpu_secs: self.redis_pids.iter().filter_map(|&p| cpu_secs(p)).sum(),
        }
    }

    /// Whether the system has redis-server processes to measure.
    pub fn has_redis(&self) -> bool {
        !self.redis_pids.is_empty()
    }

    /// Sum over the processes of their kernel-recorded peak RSS (`VmHWM`).
    pub fn hwm(&self) -> u64 {
        self.pids.iter().filter_map(|&p| hwm_bytes(p)).sum()
    }

    pub fn peak_rss(&self) -> u64 {
        let sampled = self
            .samples
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.rss_bytes)
            .max()
            .unwrap_or(0);
        sampled.max(self.now().rss_bytes)
    }

    /// Samples thinned to at most `n` points (for the report).
    pub fn series(&self, n: usize) -> Vec<Sample> {
        let all = self.samples.lock().unwrap();
        let stride = all.len().div_ceil(n.max(1)).max(1);
        all.iter().step_by(stride).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_status_kb(status, "VmRSS:"), Some(1024));
        assert_eq!(parse_status_kb(status, "VmHWM:"), Some(2048));
        let stat = "123 (a b) c) S 1 2 3 4 5 6 7 8 9 10 70 30 0 0 20 0 1 0";
        assert_eq!(parse_stat_ticks(stat), Some(100));
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(cpu_secs(me).is_some());
        assert!(hwm_bytes(me).unwrap() >= rss_bytes(me).unwrap() / 2);
    }
}
