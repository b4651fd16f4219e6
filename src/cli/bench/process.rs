//! What the benchmark reads about processes and the machine: its own CPU time (getrusage),
//! a watched process's CPU time and resident memory (`/proc/PID/stat`, `/proc/PID/status`),
//! and a one-line description of the machine for the matrix header.
//!
//! It only reads; a process or file that is gone gives `None`, never an error: these numbers
//! accompany a benchmark, they must not end one. The parsers are separate from the reads so
//! they can be tested on fixed text.

use super::report::CpuTime;

/// CPU time of this process, all threads (ZeroMQ's I/O thread included).
pub(super) fn own_cpu() -> CpuTime {
    // SAFETY: getrusage writes only into the struct it is given, which is zeroed and ours.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return CpuTime::default();
        }
        usage
    };
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    CpuTime {
        user_seconds: seconds(usage.ru_utime),
        system_seconds: seconds(usage.ru_stime),
    }
}

/// CPU time of process `pid`, from `/proc/PID/stat`.
pub(super) fn process_cpu(pid: u32) -> Option<CpuTime> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (user_ticks, system_ticks) = parse_stat_cpu_ticks(&text)?;
    // SAFETY: sysconf only reads a constant of the running system.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks_per_second <= 0 {
        return None;
    }
    let ticks_per_second = ticks_per_second as f64;
    Some(CpuTime {
        user_seconds: user_ticks as f64 / ticks_per_second,
        system_seconds: system_ticks as f64 / ticks_per_second,
    })
}

/// Resident memory of process `pid` in KiB, from `/proc/PID/status`.
pub(super) fn process_rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss_kib(&text)
}

/// `utime` and `stime` (fields 14 and 15, in clock ticks) of a `/proc/PID/stat` line. The
/// command name (field 2) is in parentheses and may itself hold spaces and parentheses, so
/// fields are counted from the last `)`.
pub(super) fn parse_stat_cpu_ticks(text: &str) -> Option<(u64, u64)> {
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11); // Field 3 (state) is the first here.
    let user = fields.next()?.parse().ok()?;
    let system = fields.next()?.parse().ok()?;
    Some((user, system))
}

/// The `VmRSS:  1234 kB` line of `/proc/PID/status`.
pub(super) fn parse_vm_rss_kib(text: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let value = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(value)
}

/// `2 CPUs (Intel(R) Xeon(R) ...), 7.8 GiB RAM, Linux 6.1.0-...`: what the matrix ran on.
pub(super) fn machine_description() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|count| count.get().to_string())
        .unwrap_or_else(|_| "?".to_string());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| parse_cpu_model(&text))
        .unwrap_or_else(|| "unknown CPU".to_string());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| parse_mem_total_kib(&text))
        .map(|kib| format!("{:.1} GiB RAM", kib as f64 / (1024.0 * 1024.0)))
        .unwrap_or_else(|| "unknown RAM".to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| format!("Linux {}", text.trim()))
        .unwrap_or_else(|_| std::env::consts::OS.to_string());
    format!("{cpus} CPUs ({model}), {memory}, {kernel}")
}

fn parse_cpu_model(text: &str) -> Option<String> {
    let line = text.lines().find(|line| line.starts_with("model name"))?;
    let (_, model) = line.split_once(':')?;
    Some(model.trim().to_string())
}

fn parse_mem_total_kib(text: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
    line["MemTotal:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_user_and_system_ticks() {
        let cases: [(&str, Option<(u64, u64)>); 4] = [
            (
                "1234 (rrmq-node) S 1 1234 1234 0 -1 4194304 500 0 0 0 171 42 0 0 20 0 9 0",
                Some((171, 42)),
            ),
            (
                "77 (a) b) c) R 1 77 77 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0",
                Some((5, 6)),
            ),
            ("1234 (rrmq-node) S 1 2", None),
            ("no parenthesis at all", None),
        ];
        for (number, (text, expected)) in cases.into_iter().enumerate() {
            assert_eq!(
                parse_stat_cpu_ticks(text),
                expected,
                "case {number}: {text}"
            );
        }
    }

    #[test]
    fn status_gives_the_resident_set() {
        let cases: [(&str, Option<u64>); 3] = [
            (
                "Name:\trrmq-node\nVmPeak:\t 9 kB\nVmRSS:\t   81234 kB\n",
                Some(81234),
            ),
            ("Name:\tkthreadd\n", None),
            ("VmRSS:\t12 MB\n", None),
        ];
        for (number, (text, expected)) in cases.into_iter().enumerate() {
            assert_eq!(parse_vm_rss_kib(text), expected, "case {number}");
        }
    }

    #[test]
    fn the_machine_is_described_from_proc() {
        assert_eq!(
            parse_cpu_model("processor\t: 0\nmodel name\t: Some CPU @ 2.0GHz\n").as_deref(),
            Some("Some CPU @ 2.0GHz")
        );
        assert_eq!(
            parse_mem_total_kib("MemTotal:        8048576 kB\n"),
            Some(8048576)
        );
        assert!(own_cpu().total_seconds() > 0.0, "a test has used some CPU");
        let me = std::process::id();
        assert!(process_cpu(me).is_some(), "this process has a stat file");
        assert!(process_rss_kib(me).is_some_and(|kib| kib > 0));
    }
}
