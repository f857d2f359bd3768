//! The fault schedule: a small deterministic PRNG and the plan it draws from `--seed`. No I/O,
//! so the same seed always prints (and injects) the same plan.

use std::fmt;
use std::time::Duration;

/// SplitMix64: tiny, fast and good enough to spread faults; not for anything secret.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`; `stream` separates independent draws made from one seed.
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next_u64();
        r
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `[lo, hi)`.
    pub fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

/// The processes a kill can hit.
pub const KILLABLE: [&str; 5] = ["saga-registry", "saga-order", "saga-inventory", "saga-payment", "saga-orchestrator"];

/// How long a partition between a service and PostgreSQL lasts.
pub const DB_PARTITION: Duration = Duration::from_secs(30);

/// What a network fault hits: one service (everything it reaches: the broker, the registry,
/// PostgreSQL), the broker (from every client) or PostgreSQL (from every service).
pub const NETWORK_TARGETS: [&str; 6] = ["saga-order", "saga-inventory", "saga-payment", "saga-orchestrator", BROKER, POSTGRESQL];

/// The broker, as a network fault's target.
pub const BROKER: &str = "broker";

/// PostgreSQL, as a network fault's target.
pub const POSTGRESQL: &str = "postgresql";

/// How long a network partition lasts by default.
pub const NET_PARTITION: Duration = Duration::from_secs(30);

/// How long a degraded network lasts.
pub const NET_DEGRADE: Duration = Duration::from_secs(30);

/// The processes a pause can hit: the services, which hold consumer-group memberships.
pub const PAUSABLE: [&str; 4] = ["saga-order", "saga-inventory", "saga-payment", "saga-orchestrator"];

/// How a poison record is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoisonKind {
    /// Random bytes that do not start with the magic byte.
    Garbage,
    /// Magic byte 7 instead of 0, then a plausible schema id and body.
    BadMagic,
    /// Magic byte 0 and a schema id the registry never issued.
    UnknownSchemaId,
    /// A real schema id with a body that is not that schema (a truncated `PlaceOrder` on the order
    /// command topic, a whole `PlaceOrder` on any other topic).
    Undecodable,
}

impl PoisonKind {
    const ALL: [PoisonKind; 4] = [PoisonKind::Garbage, PoisonKind::BadMagic, PoisonKind::UnknownSchemaId, PoisonKind::Undecodable];
}

/// One fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// `kill -9` of a process, restarted after `down`.
    Kill { target: &'static str, down: Duration },
    /// `kill -9` of the broker, restarted on the same port and storage after `down`.
    BrokerRestart { down: Duration },
    /// SIGSTOP of a service for `paused` (past its consumer session timeout, so the group gives
    /// its partitions to another member or none), then SIGCONT: a zombie that wakes up with a
    /// batch in hand and a membership it lost.
    Pause { target: &'static str, paused: Duration },
    /// `pg_ctlcluster … restart` of the PostgreSQL server.
    DbRestart,
    /// A network partition between a service and PostgreSQL for `cut`, then healed: its
    /// connections carry nothing meanwhile, with no error.
    DbPartition { target: &'static str, cut: Duration },
    /// A network partition of `target` (see [`NETWORK_TARGETS`]) for `cut`, then healed.
    NetPartition { target: &'static str, cut: Duration },
    /// `target`'s network delays every chunk by `delay` and costs `loss` of them a TCP
    /// retransmission, for `lasting`.
    NetDegrade { target: &'static str, delay: Duration, loss: f64, lasting: Duration },
    /// Re-publish `count` already-consumed records of the command and event topics.
    Duplicates { count: usize },
    /// Publish poison records: (index of the consumed topic in `TopicKind::ALL`, kind).
    Poison { records: Vec<(usize, PoisonKind)> },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill { target, down } => write!(f, "kill -9 {target}, restart after {} ms", down.as_millis()),
            Fault::BrokerRestart { down } => write!(f, "kill -9 broker, restart after {} ms", down.as_millis()),
            Fault::Pause { target, paused } => write!(f, "SIGSTOP {target} for {} ms, then SIGCONT", paused.as_millis()),
            Fault::DbRestart => write!(f, "restart postgresql"),
            Fault::DbPartition { target, cut } => write!(f, "cut {target} off from postgresql for {} ms, then heal", cut.as_millis()),
            Fault::NetPartition { target: BROKER, cut } => write!(f, "cut the broker off from every client for {} ms, then heal", cut.as_millis()),
            Fault::NetPartition { target: POSTGRESQL, cut } => write!(f, "cut postgresql off from every service for {} ms, then heal", cut.as_millis()),
            Fault::NetPartition { target, cut } => write!(f, "cut {target} off the network for {} ms, then heal", cut.as_millis()),
            Fault::NetDegrade { target, delay, loss, lasting } => {
                write!(f, "degrade {target}'s network for {} ms: delay {} ms, loss {:.1}%", lasting.as_millis(), delay.as_millis(), loss * 100.0)
            }
            Fault::Duplicates { count } => write!(f, "re-publish {count} consumed records"),
            Fault::Poison { records } => {
                write!(f, "publish {} poison records:", records.len())?;
                for (topic, kind) in records {
                    write!(f, " {kind:?}@{}", saga_contracts::TopicKind::ALL[*topic].suffix())?;
                }
                Ok(())
            }
        }
    }
}

/// A fault and when it happens, from the start of the load.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// Offset from the start of the load.
    pub at: Duration,
    /// What happens.
    pub fault: Fault,
}

/// How many of each fault to inject.
#[derive(Debug, Clone, Copy)]
pub struct Amounts {
    /// Process kills (registry and services, round robin in a shuffled order).
    pub kills: usize,
    /// Broker kills.
    pub broker_restarts: usize,
    /// PostgreSQL restarts.
    pub db_restarts: usize,
    /// Services paused past their session timeout.
    pub pauses: usize,
    /// Services cut off from PostgreSQL for 30 s.
    pub db_partitions: usize,
    /// Network partitions of a service, the broker or PostgreSQL.
    pub net_partitions: usize,
    /// How long each lasts.
    pub net_partition: Duration,
    /// Delayed and lossy networks of a service, the broker or PostgreSQL.
    pub net_degrades: usize,
    /// Records re-published.
    pub duplicates: usize,
    /// Poison records.
    pub poison: usize,
}

/// Draws the plan for `seed`, spread over `window` (faults land between 5 % and 90 % of it, so
/// sagas are in flight before and after each). Sorted by time.
pub fn plan(seed: u64, amounts: Amounts, window: Duration) -> Vec<Planned> {
    let mut rng = Rng::new(seed, 1);
    let at = |rng: &mut Rng, lo: f64, hi: f64| window.mul_f64(0.05 + 0.85 * rng.between(lo, hi));
    let mut out = Vec::new();
    let mut order = KILLABLE;
    for i in 0..amounts.kills {
        if i % order.len() == 0 {
            rng.shuffle(&mut order);
        }
        let down = Duration::from_millis(200 + rng.below(2800));
        out.push(Planned { at: at(&mut rng, 0.0, 1.0), fault: Fault::Kill { target: order[i % order.len()], down } });
    }
    // Broker and database restarts each get their own slice of the window, so two of a kind never overlap.
    for i in 0..amounts.broker_restarts {
        let n = amounts.broker_restarts as f64;
        let down = Duration::from_millis(500 + rng.below(2500));
        out.push(Planned { at: at(&mut rng, (i as f64 + 0.2) / n, (i as f64 + 0.8) / n), fault: Fault::BrokerRestart { down } });
    }
    for i in 0..amounts.db_restarts {
        let n = amounts.db_restarts as f64;
        out.push(Planned { at: at(&mut rng, (i as f64 + 0.2) / n, (i as f64 + 0.8) / n), fault: Fault::DbRestart });
    }
    // The session timeout is 6 s: paused 11-16 s, the member is out of its group when it wakes.
    let mut pausable = PAUSABLE;
    for i in 0..amounts.pauses {
        if i % pausable.len() == 0 {
            rng.shuffle(&mut pausable);
        }
        let paused = Duration::from_millis(11_000 + rng.below(5_000));
        out.push(Planned { at: at(&mut rng, 0.0, 1.0), fault: Fault::Pause { target: pausable[i % pausable.len()], paused } });
    }
    // Each partition gets its own slice of the window (they may overlap when the window is short:
    // a link stays cut until each of its cuts has ended); drawn from a stream of its own, so the
    // other faults of a seed stay where they were.
    let mut prng = Rng::new(seed, 2);
    let mut partitionable = PAUSABLE;
    prng.shuffle(&mut partitionable);
    for i in 0..amounts.db_partitions {
        let n = amounts.db_partitions as f64;
        let fault = Fault::DbPartition { target: partitionable[i % partitionable.len()], cut: DB_PARTITION };
        out.push(Planned { at: at(&mut prng, (i as f64 + 0.1) / n, (i as f64 + 0.5) / n), fault });
    }
    // Network faults, each kind from a stream of its own, the partitions in slices of their own;
    // targets in a shuffled order, so every kind of target is hit before any twice.
    let mut nrng = Rng::new(seed, 3);
    let mut targets = NETWORK_TARGETS;
    for i in 0..amounts.net_partitions {
        if i % targets.len() == 0 {
            nrng.shuffle(&mut targets);
        }
        let n = amounts.net_partitions as f64;
        let fault = Fault::NetPartition { target: targets[i % targets.len()], cut: amounts.net_partition };
        out.push(Planned { at: at(&mut nrng, (i as f64 + 0.1) / n, (i as f64 + 0.5) / n), fault });
    }
    let mut drng = Rng::new(seed, 4);
    let mut targets = NETWORK_TARGETS;
    for i in 0..amounts.net_degrades {
        if i % targets.len() == 0 {
            drng.shuffle(&mut targets);
        }
        let delay = Duration::from_millis(20 + drng.below(130));
        let loss = drng.between(0.01, 0.05);
        let fault = Fault::NetDegrade { target: targets[i % targets.len()], delay, loss, lasting: NET_DEGRADE };
        out.push(Planned { at: at(&mut drng, 0.0, 1.0), fault });
    }
    for count in split(amounts.duplicates, 25) {
        out.push(Planned { at: at(&mut rng, 0.1, 1.0), fault: Fault::Duplicates { count } });
    }
    for count in split(amounts.poison, 10) {
        let records = (0..count).map(|_| (rng.below(6) as usize, PoisonKind::ALL[rng.below(PoisonKind::ALL.len() as u64) as usize])).collect();
        out.push(Planned { at: at(&mut rng, 0.0, 1.0), fault: Fault::Poison { records } });
    }
    out.sort_by_key(|p| p.at);
    out
}

/// Splits `total` into bursts of about `per_burst` (at least one burst when `total` > 0).
fn split(total: usize, per_burst: usize) -> Vec<usize> {
    if total == 0 {
        return Vec::new();
    }
    let bursts = total.div_ceil(per_burst).max(1);
    (0..bursts).map(|i| total / bursts + usize::from(i < total % bursts)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amounts() -> Amounts {
        Amounts {
            kills: 12,
            broker_restarts: 2,
            db_restarts: 2,
            pauses: 3,
            db_partitions: 2,
            net_partitions: 6,
            net_partition: NET_PARTITION,
            net_degrades: 3,
            duplicates: 120,
            poison: 23,
        }
    }

    #[test]
    fn the_same_seed_draws_the_same_plan_and_another_seed_another() {
        let w = Duration::from_secs(60);
        assert_eq!(plan(7, amounts(), w), plan(7, amounts(), w));
        assert_ne!(plan(7, amounts(), w), plan(8, amounts(), w));
    }

    #[test]
    fn the_plan_has_every_amount_and_stays_in_the_window() {
        let w = Duration::from_secs(60);
        let p = plan(3, amounts(), w);
        let count = |f: &dyn Fn(&Fault) -> usize| p.iter().map(|x| f(&x.fault)).sum::<usize>();
        assert_eq!(count(&|f| usize::from(matches!(f, Fault::Kill { .. }))), 12);
        assert_eq!(count(&|f| usize::from(matches!(f, Fault::BrokerRestart { .. }))), 2);
        assert_eq!(count(&|f| usize::from(matches!(f, Fault::DbRestart))), 2);
        assert_eq!(count(&|f| usize::from(matches!(f, Fault::Pause { paused, .. } if *paused > Duration::from_secs(10)))), 3);
        assert_eq!(count(&|f| usize::from(matches!(f, Fault::DbPartition { cut, .. } if *cut == DB_PARTITION))), 2);
        let mut cut: Vec<_> = p.iter().filter_map(|x| if let Fault::NetPartition { target, cut } = x.fault { Some((target, cut)) } else { None }).collect();
        cut.sort();
        let mut every: Vec<_> = NETWORK_TARGETS.iter().map(|t| (*t, NET_PARTITION)).collect();
        every.sort();
        assert_eq!(cut, every, "six partitions hit each target once");
        let degraded = |f: &Fault| matches!(f, Fault::NetDegrade { delay, loss, lasting, .. } if *lasting == NET_DEGRADE && *delay >= Duration::from_millis(20) && (0.01..0.05).contains(loss));
        assert_eq!(count(&|f| usize::from(degraded(f))), 3);
        assert_eq!(count(&|f| if let Fault::Duplicates { count } = f { *count } else { 0 }), 120);
        assert_eq!(count(&|f| if let Fault::Poison { records } = f { records.len() } else { 0 }), 23);
        assert!(p.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(p.iter().all(|x| x.at >= w.mul_f64(0.05) && x.at <= w.mul_f64(0.9)));
    }

    #[test]
    fn every_process_is_killed_once_before_any_twice() {
        let p = plan(11, Amounts { kills: 5, ..amounts() }, Duration::from_secs(10));
        let mut killed: Vec<_> = p.iter().filter_map(|x| if let Fault::Kill { target, .. } = x.fault { Some(target) } else { None }).collect();
        killed.sort();
        let mut all = KILLABLE.to_vec();
        all.sort();
        assert_eq!(killed, all);
    }

    #[test]
    fn split_keeps_the_total() {
        assert_eq!(split(0, 25), Vec::<usize>::new());
        assert_eq!(split(3, 25), vec![3]);
        assert_eq!(split(60, 25).iter().sum::<usize>(), 60);
        assert_eq!(split(60, 25).len(), 3);
    }
}
