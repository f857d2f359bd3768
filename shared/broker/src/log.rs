//! One partition's log: record batches as the producers sent them, with offsets assigned.
//!
//! Batches are kept whole (magic v2, as every current client writes them); appending rewrites
//! only the base offset, which the batch checksum does not cover. Fetches return whole batches,
//! so a fetch from the middle of a batch starts at that batch and the client skips what it has.

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};

use crate::error::Code;

const BASE_OFFSET: usize = 0;
const BATCH_LENGTH: usize = 8;
const LEADER_EPOCH: usize = 12;
const MAGIC: usize = 16;
const LAST_OFFSET_DELTA: usize = 23;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
/// Size of a v2 batch header, up to and including the record count.
const HEADER: usize = 61;

/// How many batches per producer are remembered to answer a retried send with its first offset.
const REMEMBERED_BATCHES: usize = 5;

struct Batch {
    base_offset: i64,
    last_offset: i64,
    max_timestamp: i64,
    bytes: Bytes,
}

#[derive(Default)]
struct ProducerState {
    epoch: i16,
    last_sequence: i32,
    /// (first sequence, base offset) of the last batches.
    recent: VecDeque<(i32, i64)>,
}

/// The result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Whether the batches were a retry of ones already in the log (nothing was appended).
    pub duplicate: bool,
}

/// One partition.
#[derive(Default)]
pub struct PartitionLog {
    batches: VecDeque<Batch>,
    start_offset: i64,
    next_offset: i64,
    bytes: usize,
    producers: HashMap<i64, ProducerState>,
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl PartitionLog {
    /// The offset the next record gets (the high watermark: every record is committed at once).
    pub fn high_watermark(&self) -> i64 {
        self.next_offset
    }

    /// The first offset still held.
    pub fn start_offset(&self) -> i64 {
        self.start_offset
    }

    /// Appends the batches in `records`, then drops the oldest batches while the log holds more
    /// than `retention_bytes`.
    pub fn append(&mut self, records: &[u8], retention_bytes: usize) -> Result<Appended, Code> {
        let batches = split(records)?;
        let Some(first) = batches.first() else { return Err(Code::CorruptMessage) };
        // An idempotent producer's retry: answer with the offset the batch got the first time.
        let producer_id = i64_at(first, PRODUCER_ID);
        let sequence = i32_at(first, BASE_SEQUENCE);
        if producer_id >= 0 && sequence >= 0 {
            let epoch = i16_at(first, PRODUCER_EPOCH);
            let state = self.producers.entry(producer_id).or_insert_with(|| ProducerState { epoch, last_sequence: -1, recent: VecDeque::new() });
            if epoch < state.epoch {
                return Err(Code::InvalidProducerEpoch);
            }
            if epoch > state.epoch {
                *state = ProducerState { epoch, last_sequence: -1, recent: VecDeque::new() };
            }
            if let Some(&(_, base)) = state.recent.iter().find(|(s, _)| *s == sequence) {
                return Ok(Appended { base_offset: base, duplicate: true });
            }
            if state.last_sequence >= 0 && sequence != state.last_sequence.wrapping_add(1) {
                return Err(Code::OutOfOrderSequenceNumber);
            }
        }
        let base_offset = self.next_offset;
        for raw in batches {
            let count = i64::from(i32_at(raw, LAST_OFFSET_DELTA)) + 1;
            let mut bytes = BytesMut::from(raw);
            bytes[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&self.next_offset.to_be_bytes());
            bytes[LEADER_EPOCH..LEADER_EPOCH + 4].copy_from_slice(&0i32.to_be_bytes());
            let batch = Batch {
                base_offset: self.next_offset,
                last_offset: self.next_offset + count - 1,
                max_timestamp: i64_at(raw, MAX_TIMESTAMP),
                bytes: bytes.freeze(),
            };
            if producer_id >= 0 && i32_at(raw, BASE_SEQUENCE) >= 0 {
                let state = self.producers.get_mut(&producer_id).expect("registered above");
                state.last_sequence = i32_at(raw, BASE_SEQUENCE).wrapping_add(count as i32 - 1);
                state.recent.push_back((i32_at(raw, BASE_SEQUENCE), batch.base_offset));
                if state.recent.len() > REMEMBERED_BATCHES {
                    state.recent.pop_front();
                }
            }
            self.next_offset += count;
            self.bytes += batch.bytes.len();
            self.batches.push_back(batch);
        }
        while self.bytes > retention_bytes && self.batches.len() > 1 {
            let dropped = self.batches.pop_front().expect("more than one");
            self.bytes -= dropped.bytes.len();
            self.start_offset = dropped.last_offset + 1;
        }
        Ok(Appended { base_offset, duplicate: false })
    }

    /// Whole batches from the one holding `offset`, at least one, then up to `max_bytes` in all.
    /// `Err(OffsetOutOfRange)` when `offset` is before the start or past the end.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<Vec<Bytes>, Code> {
        if offset < self.start_offset || offset > self.next_offset {
            return Err(Code::OffsetOutOfRange);
        }
        let first = self.batches.partition_point(|b| b.last_offset < offset);
        let mut out = Vec::new();
        let mut size = 0;
        for batch in self.batches.iter().skip(first) {
            if !out.is_empty() && size + batch.bytes.len() > max_bytes {
                break;
            }
            size += batch.bytes.len();
            out.push(batch.bytes.clone());
        }
        Ok(out)
    }

    /// The first offset whose batch has a record at or after `timestamp`; the high watermark if none.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> (i64, i64) {
        self.batches.iter().find(|b| b.max_timestamp >= timestamp).map_or((-1, self.next_offset), |b| (b.max_timestamp, b.base_offset))
    }
}

/// Splits a produce request's records into v2 batches.
fn split(mut records: &[u8]) -> Result<Vec<&[u8]>, Code> {
    let mut out = Vec::new();
    while !records.is_empty() {
        if records.len() < HEADER {
            return Err(Code::CorruptMessage);
        }
        let length = i32_at(records, BATCH_LENGTH);
        let total = usize::try_from(length).map_err(|_| Code::CorruptMessage)? + 12;
        if total < HEADER || total > records.len() {
            return Err(Code::CorruptMessage);
        }
        if records[MAGIC] != 2 {
            return Err(Code::UnsupportedForMessageFormat);
        }
        out.push(&records[..total]);
        records = &records[total..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v2 batch header with `count` records (no record bodies: the log never reads them).
    fn batch(count: i32, producer: i64, sequence: i32, timestamp: i64) -> Vec<u8> {
        let mut b = vec![0u8; HEADER];
        b[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&((HEADER - 12) as i32).to_be_bytes());
        b[MAGIC] = 2;
        b[LAST_OFFSET_DELTA..LAST_OFFSET_DELTA + 4].copy_from_slice(&(count - 1).to_be_bytes());
        b[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&timestamp.to_be_bytes());
        b[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&producer.to_be_bytes());
        b[BASE_SEQUENCE..BASE_SEQUENCE + 4].copy_from_slice(&sequence.to_be_bytes());
        b
    }

    #[test]
    fn offsets_are_assigned_in_order_and_written_into_the_batch() {
        let mut log = PartitionLog::default();
        assert_eq!(log.append(&batch(3, -1, -1, 10), usize::MAX).unwrap().base_offset, 0);
        assert_eq!(log.append(&batch(2, -1, -1, 20), usize::MAX).unwrap().base_offset, 3);
        assert_eq!(log.high_watermark(), 5);
        let read = log.read(4, 1).unwrap();
        assert_eq!(read.len(), 1, "at least one batch even past max_bytes");
        assert_eq!(i64_at(&read[0], BASE_OFFSET), 3);
        assert_eq!(log.read(0, usize::MAX).unwrap().len(), 2);
        assert!(log.read(5, usize::MAX).unwrap().is_empty());
        assert_eq!(log.read(6, usize::MAX), Err(Code::OffsetOutOfRange));
        assert_eq!(log.offset_for_timestamp(15), (20, 3));
    }

    #[test]
    fn a_retried_idempotent_batch_is_not_appended_twice() {
        let mut log = PartitionLog::default();
        log.append(&batch(2, 7, 0, 0), usize::MAX).unwrap();
        let again = log.append(&batch(2, 7, 0, 0), usize::MAX).unwrap();
        assert_eq!(again, Appended { base_offset: 0, duplicate: true });
        assert_eq!(log.high_watermark(), 2);
        assert_eq!(log.append(&batch(1, 7, 5, 0), usize::MAX), Err(Code::OutOfOrderSequenceNumber));
        assert_eq!(log.append(&batch(1, 7, 2, 0), usize::MAX).unwrap().base_offset, 2);
    }

    #[test]
    fn retention_drops_the_oldest_batches() {
        let mut log = PartitionLog::default();
        for _ in 0..4 {
            log.append(&batch(1, -1, -1, 0), 2 * HEADER).unwrap();
        }
        assert_eq!(log.start_offset(), 2);
        assert_eq!(log.read(1, usize::MAX), Err(Code::OffsetOutOfRange));
        assert_eq!(log.read(2, usize::MAX).unwrap().len(), 2);
    }

    #[test]
    fn a_truncated_batch_is_rejected() {
        let mut log = PartitionLog::default();
        let b = batch(1, -1, -1, 0);
        assert_eq!(log.append(&b[..HEADER - 1], usize::MAX), Err(Code::CorruptMessage));
        assert_eq!(log.high_watermark(), 0);
    }
}
