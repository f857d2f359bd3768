//! Where a benchmark's CPU went, by kind of thread, and the rate the machine's cores would allow
//! at that cost per saga.
//!
//! In embedded mode every service, the broker and the load run in `sagactl`'s process, so its
//! threads tell the stages apart: each service's SQLite writer, the Kafka clients' threads
//! (librdkafka's and the producers' polling threads), the in-process broker, the async runtime's
//! workers. Read from `/proc/self/task/*/stat` before and after the measured run; a thread that
//! ended during the run is not counted (the services' threads live as long as the stack).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// The CPU of one kind of thread over a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThreadCpu {
    /// `kafka-clients`, `broker`, `runtime`, `sqlite-orchestrator`, `sqlite-pool`, ...
    pub kind: String,
    /// CPU over the run, in cores.
    pub cpu_cores: f64,
    /// CPU per finished saga, milliseconds.
    pub ms_per_saga: f64,
    /// The part of it spent in the kernel, from 0 to 1.
    pub kernel_share: f64,
}

/// The services whose SQLite writer threads are named `sqlite-<service>` (cut to 15 bytes by the
/// kernel).
const SERVICES: [&str; 5] = ["orchestrator", "inventory", "payment", "order", "query"];

/// The kind of a thread by its name (`comm`, at most 15 bytes).
pub fn kind_of(comm: &str) -> String {
    if comm.starts_with("rdk:") || comm.starts_with("producer pollin") {
        return "kafka-clients".into();
    }
    if comm.starts_with("sqlx-sqlite") {
        return "sqlite-pool".into();
    }
    if let Some(service) = comm.strip_prefix("sqlite-") {
        if let Some(full) = SERVICES.iter().find(|s| s.starts_with(service) && !service.is_empty()) {
            return format!("sqlite-{full}");
        }
    }
    match comm {
        "tokio-rt-worker" => "runtime".into(),
        "broker" => "broker".into(),
        other => other.to_string(),
    }
}

/// CPU time so far, seconds: in user space, and in the kernel on the thread's behalf (system
/// calls: sockets, futexes, fsync; and the page faults and interrupts charged to it).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTime {
    /// User time.
    pub user_s: f64,
    /// System time.
    pub system_s: f64,
}

impl CpuTime {
    /// User plus system time.
    pub fn total(self) -> f64 {
        self.user_s + self.system_s
    }

    /// What was spent between `earlier` and this reading.
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime { user_s: self.user_s - earlier.user_s, system_s: self.system_s - earlier.system_s }
    }
}

/// A thread's (or a process's) name and its CPU time so far, from the text of its `stat`.
pub fn parse_stat(stat: &str) -> Option<(String, CpuTime)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After ")" the state is field 3, so utime (14) and stime (15) are at 11 and 12; in clock
    // ticks of 1/100 s (USER_HZ, fixed at 100 on Linux).
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    Some((comm, CpuTime { user_s: ticks(11)? / 100.0, system_s: ticks(12)? / 100.0 }))
}

/// Every thread of this process now: id -> (name, CPU time). Empty where /proc is not there.
pub fn snapshot() -> HashMap<String, (String, CpuTime)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return HashMap::new() };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            Some((t.file_name().to_string_lossy().into_owned(), parse_stat(&stat)?))
        })
        .collect()
}

/// The CPU each kind of thread used between two snapshots, most first; a thread born in between
/// counts from 0.
pub fn by_kind(before: &HashMap<String, (String, CpuTime)>, after: &HashMap<String, (String, CpuTime)>, elapsed_s: f64, sagas: usize) -> Vec<ThreadCpu> {
    let mut spent: BTreeMap<String, CpuTime> = BTreeMap::new();
    for (tid, (comm, cpu)) in after {
        let earlier = before.get(tid).filter(|(c, _)| c == comm).map_or(CpuTime::default(), |(_, cpu)| *cpu);
        let used = cpu.since(earlier);
        let kind = spent.entry(kind_of(comm)).or_default();
        kind.user_s += used.user_s.max(0.0);
        kind.system_s += used.system_s.max(0.0);
    }
    let mut kinds: Vec<ThreadCpu> = spent
        .into_iter()
        .filter(|(_, cpu)| cpu.total() > 0.0)
        .map(|(kind, cpu)| ThreadCpu {
            kind,
            cpu_cores: cpu.total() / elapsed_s.max(f64::EPSILON),
            ms_per_saga: cpu.total() * 1000.0 / sagas.max(1) as f64,
            kernel_share: cpu.system_s / cpu.total(),
        })
        .collect();
    kinds.sort_by(|a, b| b.cpu_cores.total_cmp(&a.cpu_cores).then_with(|| a.kind.cmp(&b.kind)));
    kinds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_the_name_and_user_and_system_time() {
        // A name with a space, as librdkafka's producers' polling threads have.
        let stat = "4242 (producer pollin) S 1 4242 4242 0 -1 4194368 10 0 0 0 250 75 0 0 20 0 1 0 100 0 0";
        let (comm, cpu) = parse_stat(stat).expect("a whole line");
        assert_eq!((comm.as_str(), cpu.user_s, cpu.system_s, cpu.total()), ("producer pollin", 2.5, 0.75, 3.25));
        assert_eq!(parse_stat("4242 (cut"), None);
    }

    #[test]
    fn threads_are_grouped_by_what_they_run() {
        assert_eq!(kind_of("rdk:broker0"), "kafka-clients");
        assert_eq!(kind_of("rdk:main"), "kafka-clients");
        assert_eq!(kind_of("producer pollin"), "kafka-clients");
        assert_eq!(kind_of("sqlite-orchestr"), "sqlite-orchestrator");
        assert_eq!(kind_of("sqlite-order"), "sqlite-order");
        assert_eq!(kind_of("sqlite-inventor"), "sqlite-inventory");
        assert_eq!(kind_of("sqlx-sqlite-wor"), "sqlite-pool");
        assert_eq!(kind_of("tokio-rt-worker"), "runtime");
        assert_eq!(kind_of("broker"), "broker");
        assert_eq!(kind_of("sagactl"), "sagactl");
        assert_eq!(kind_of("sqlite-"), "sqlite-");
    }

    #[test]
    fn each_kind_gets_what_its_threads_used_between_the_snapshots() {
        // Each thread's user time as given, and a quarter of that again in the kernel.
        let snap = |threads: &[(&str, &str, f64)]| -> HashMap<String, (String, CpuTime)> {
            threads.iter().map(|(tid, comm, user)| (tid.to_string(), (comm.to_string(), CpuTime { user_s: *user, system_s: user / 4.0 }))).collect()
        };
        let before = snap(&[("1", "sagactl", 1.0), ("2", "rdk:broker0", 2.0), ("3", "rdk:main", 0.5), ("4", "sqlite-orchestr", 3.0)]);
        // Thread 5 was born during the run; thread 4 did nothing; a reused id with another name
        // counts from 0.
        let after = snap(&[
            ("1", "sagactl", 1.5),
            ("2", "rdk:broker0", 3.0),
            ("3", "rdk:main", 0.75),
            ("4", "sqlite-orchestr", 3.0),
            ("5", "broker", 0.5),
            ("6", "rdk:broker0", 0.25),
        ]);
        let kinds = by_kind(&before, &snap(&[]), 2.0, 100);
        assert!(kinds.is_empty());
        let kinds = by_kind(&before, &after, 2.0, 100);
        let expected = [("kafka-clients", 1.5), ("broker", 0.5), ("sagactl", 0.5)];
        assert_eq!(kinds.len(), expected.len(), "{kinds:?}");
        for (k, (kind, user)) in kinds.iter().zip(expected) {
            let seconds = user * 1.25;
            assert_eq!(k.kind, kind);
            assert!((k.cpu_cores - seconds / 2.0).abs() < 1e-9, "{k:?}");
            assert!((k.ms_per_saga - seconds * 10.0).abs() < 1e-9, "{k:?}");
            assert!((k.kernel_share - 0.2).abs() < 1e-9, "{k:?}");
        }
    }
}
