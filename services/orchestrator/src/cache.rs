//! The running sagas this orchestrator moved last, kept in memory so that the reply that comes
//! next finds its saga without reading it back (a statement and a JSON decode per reply).
//!
//! Safe because every write to a saga checks and bumps its version
//! ([`crate::store::update_logged`]): an entry that is stale (an operator, a deadline or another
//! instance moved the saga since) fails that check, and the caller forgets it and reads the saga
//! from the database. Entries go in only once the transaction that wrote them has committed
//! ([`crate::Observation::Saved`], counted in [`saga_runtime::Handler::committed`]); within a
//! transaction, what it wrote itself is read from its notes first ([`SagaCache::pending`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::metrics::Observation;
use crate::store::SagaRecord;

/// Running sagas by id, at most [`SagaCache::CAPACITY`].
#[derive(Debug, Default)]
pub(crate) struct SagaCache {
    sagas: Mutex<HashMap<String, Arc<SagaRecord>>>,
}

impl SagaCache {
    /// Far above what a service has in flight (a saga leaves when it ends, is parked or gets
    /// stuck), so that the cache never holds more than a few MiB; when full it starts again
    /// empty rather than keep an order of use on every hit.
    const CAPACITY: usize = 16_384;

    /// The saga as this transaction last wrote it, if it did: newer than anything committed.
    pub(crate) fn pending(notes: &[Observation], saga_id: &str) -> Option<Arc<SagaRecord>> {
        notes.iter().rev().find_map(|o| match o {
            Observation::Saved(saga) if saga.saga_id == saga_id => Some(saga.clone()),
            _ => None,
        })
    }

    /// The saga as last committed here, if it is kept.
    pub(crate) fn get(&self, saga_id: &str) -> Option<Arc<SagaRecord>> {
        self.lock().get(saga_id).cloned()
    }

    /// Drops `saga_id` (its entry turned out stale).
    pub(crate) fn forget(&self, saga_id: &str) {
        self.lock().remove(saga_id);
    }

    /// Keeps `saga` as committed, or drops it once it no longer waits for replies.
    pub(crate) fn committed(&self, saga: &Arc<SagaRecord>) {
        let mut sagas = self.lock();
        if !saga.state.status.is_timed() {
            sagas.remove(&saga.saga_id);
            return;
        }
        if sagas.len() >= Self::CAPACITY && !sagas.contains_key(&saga.saga_id) {
            sagas.clear();
        }
        sagas.insert(saga.saga_id.clone(), saga.clone());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<SagaRecord>>> {
        // A panic while holding the map leaves it whole (every operation is one map call).
        self.sagas.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::{Position, SagaState, Status};
    use crate::store::SagaData;

    fn saga(id: &str, status: Status, version: i64) -> Arc<SagaRecord> {
        Arc::new(SagaRecord {
            saga_id: id.into(),
            saga_type: "order".into(),
            definition_version: 1,
            state: SagaState { status, position: Position::Step(0), attempt: 1, failure: None, blocked: None },
            data: SagaData { order_id: id.into(), customer_id: "alice".into(), currency: "EUR".into(), total_minor: 1, lines: vec![] },
            correlation_id: "c".into(),
            created_at_ms: 1,
            updated_at_ms: 1,
            version,
            trace_parent: None,
            deadline_at_ms: None,
            kafka_partition: Some(0),
        })
    }

    #[test]
    fn keeps_running_sagas_and_drops_those_that_wait_for_no_reply() {
        let cache = SagaCache::default();
        cache.committed(&saga("a", Status::Running, 1));
        cache.committed(&saga("b", Status::Compensating, 3));
        assert_eq!(cache.get("a").map(|s| s.version), Some(1));
        cache.committed(&saga("a", Status::Running, 2));
        assert_eq!(cache.get("a").map(|s| s.version), Some(2), "the newer commit replaces the older");
        for status in [Status::Completed, Status::Compensated, Status::Stuck, Status::Parked] {
            cache.committed(&saga("b", Status::Compensating, 3));
            cache.committed(&saga("b", status, 4));
            assert!(cache.get("b").is_none(), "{status:?} waits for no reply");
        }
        cache.forget("a");
        assert!(cache.get("a").is_none());
    }

    #[test]
    fn the_transactions_own_write_comes_before_the_cache_and_the_last_one_wins() {
        let notes = vec![
            Observation::Saved(saga("a", Status::Running, 2)),
            Observation::Started,
            Observation::Saved(saga("b", Status::Running, 1)),
            Observation::Saved(saga("a", Status::Running, 3)),
        ];
        assert_eq!(SagaCache::pending(&notes, "a").map(|s| s.version), Some(3));
        assert_eq!(SagaCache::pending(&notes, "b").map(|s| s.version), Some(1));
        assert!(SagaCache::pending(&notes, "c").is_none());
    }

    #[test]
    fn a_full_cache_starts_again_rather_than_grow() {
        let cache = SagaCache::default();
        for i in 0..SagaCache::CAPACITY {
            cache.committed(&saga(&i.to_string(), Status::Running, 1));
        }
        cache.committed(&saga("0", Status::Running, 2));
        assert_eq!(cache.get("1").map(|s| s.version), Some(1), "replacing a kept saga does not count as growing");
        cache.committed(&saga("new", Status::Running, 1));
        assert!(cache.get("1").is_none());
        assert_eq!(cache.lock().len(), 1);
    }
}
