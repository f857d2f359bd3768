//! Saga metrics: started and finished sagas by outcome, saga and step latency, sagas by state.
//!
//! Observations are collected while a transaction runs and counted only when it commits (the
//! runtime calls [`Handler::committed`](saga_runtime::Handler::committed)); a rolled back batch is
//! retried and must not count twice.

use saga_runtime::prometheus::{exponential_buckets, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// One thing a saga did, noted down in its transaction and counted once that commits.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// A saga started.
    Started,
    /// A step moved: which, with what outcome, how long after the saga's previous move.
    Step {
        /// The step.
        step: String,
        /// What happened to it (`step-succeeded`, `compensated`, ...).
        outcome: String,
        /// Seconds since the saga last moved.
        seconds: f64,
    },
    /// A saga ended: how, and how long it took in all.
    Finished {
        /// `completed`, `compensated`, ...
        outcome: String,
        /// Seconds since it started.
        seconds: f64,
    },
    /// A saga as the transaction left it (kept in the orchestrator's cache once that commits;
    /// nothing to count).
    Saved(std::sync::Arc<crate::store::SagaRecord>),
}

/// The orchestrator's metric families.
pub(crate) struct SagaMetrics {
    started: IntCounterVec,
    finished: IntCounterVec,
    duration: HistogramVec,
    step_duration: HistogramVec,
    pub(crate) in_state: IntGaugeVec,
}

impl SagaMetrics {
    pub(crate) fn register(registry: &Registry) -> SagaMetrics {
        // 5 ms to about 80 s: one hop on an idle system up to a saga that waited out retries.
        let buckets = exponential_buckets(0.005, 2.0, 15).expect("valid buckets");
        let m = SagaMetrics {
            started: IntCounterVec::new(Opts::new("saga_sagas_started_total", "Sagas started."), &["saga_type"]).expect("valid metric"),
            finished: IntCounterVec::new(Opts::new("saga_sagas_finished_total", "Sagas that reached an end state, by outcome."), &["saga_type", "outcome"])
                .expect("valid metric"),
            duration: HistogramVec::new(
                HistogramOpts::new("saga_duration_seconds", "Time from saga start to its end state.").buckets(buckets.clone()),
                &["saga_type", "outcome"],
            )
            .expect("valid metric"),
            step_duration: HistogramVec::new(
                HistogramOpts::new("saga_step_duration_seconds", "Time from a step's command to the reply that moved the saga on.").buckets(buckets),
                &["saga_type", "step", "outcome"],
            )
            .expect("valid metric"),
            in_state: IntGaugeVec::new(Opts::new("saga_sagas_in_state", "Sagas not yet ended, by state (read from the saga table)."), &["saga_type", "state"])
                .expect("valid metric"),
        };
        for c in [
            Box::new(m.started.clone()) as Box<dyn saga_runtime::prometheus::core::Collector>,
            Box::new(m.finished.clone()),
            Box::new(m.duration.clone()),
            Box::new(m.step_duration.clone()),
            Box::new(m.in_state.clone()),
        ] {
            registry.register(c).expect("saga metrics registered once");
        }
        m
    }

    pub(crate) fn count(&self, saga_type: &str, o: &Observation) {
        match o {
            Observation::Started => self.started.with_label_values(&[saga_type]).inc(),
            Observation::Step { step, outcome, seconds } => self.step_duration.with_label_values(&[saga_type, step, outcome]).observe(*seconds),
            Observation::Finished { outcome, seconds } => {
                self.finished.with_label_values(&[saga_type, outcome]).inc();
                self.duration.with_label_values(&[saga_type, outcome]).observe(*seconds);
            }
            Observation::Saved(_) => {}
        }
    }
}
