//! CPU seconds and peak RSS of the processes a scenario runs, from /proc.

use super::*;

/// The CPU seconds of Kratos and its database: Kratos' own, plus (PostgreSQL) the server's and
/// its backends', which do Kratos' SQL work.
pub(super) fn kratos_cpu(kratos: &KratosInstance) -> f64 {
    kratos.pid().map_or(0.0, cpu_seconds) + kratos.postgres_pid().map_or(0.0, cpu_seconds_tree)
}

pub(super) fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds (user + system) a process has used so far; 0 when it is gone.
pub(super) fn cpu_seconds(pid: u32) -> f64 {
    // /proc/<pid>/stat: the fields after the parenthesised command name; utime and stime are
    // the 14th and 15th fields of the line, in clock ticks (100 per second on Linux).
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

/// The fields of /proc/<pid>/stat after the parenthesised command name (state is the first).
pub(super) fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// CPU seconds of a process, of its children that ended (cutime, cstime) and of its living
/// children: PostgreSQL's work is done by backends, one per connection, that live as long as
/// Kratos keeps the connection. Taken twice, the difference counts a backend that ended in
/// between once (its time moves from the living children to cutime).
pub(super) fn cpu_seconds_tree(pid: u32) -> f64 {
    let ticks = |fields: &[String], from: usize, to: usize| -> f64 {
        fields[from..=to.min(fields.len().saturating_sub(1))]
            .iter()
            .filter_map(|v| v.parse::<f64>().ok())
            .sum::<f64>()
            / 100.0
    };
    let Some(own) = stat_fields(pid) else {
        return 0.0;
    };
    let parent = pid.to_string();
    let children: f64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat_fields)
        .filter(|fields| fields.get(1) == Some(&parent))
        .map(|fields| ticks(&fields, 11, 14))
        .sum();
    ticks(&own, 11, 14) + children
}

/// The processes whose CPU time a scenario reports (PostgreSQL with its backends).
pub(super) fn cpu_snapshot(processes: &[(&'static str, u32)]) -> Vec<(&'static str, f64)> {
    processes
        .iter()
        .map(|(name, pid)| {
            let cpu = if *name == "postgres" {
                cpu_seconds_tree(*pid)
            } else {
                cpu_seconds(*pid)
            };
            (*name, cpu)
        })
        .collect()
}

/// CPU seconds each process used between two snapshots of the same processes.
pub(super) fn cpu_used(
    after: &[(&'static str, f64)],
    before: &[(&'static str, f64)],
) -> Vec<(&'static str, f64)> {
    after
        .iter()
        .zip(before)
        .map(|((name, after), (_, before))| (*name, after - before))
        .collect()
}

/// Waits (at most 30 s) until `processes` together use less than a tenth of a core.
pub(super) async fn settle(processes: &[(&'static str, u32)]) {
    let total = || cpu_snapshot(processes).iter().map(|(_, s)| s).sum::<f64>();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut before = total();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = total();
        if now - before < 0.1 {
            return;
        }
        before = now;
    }
}

/// SIGTERM to a process (the operator shuts down as a pod stop asks it to).
pub(super) fn nix_term(pid: u32) -> std::io::Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("kill exited with {status}")))
    }
}
