//! Kafka error codes the broker answers with.

/// A Kafka protocol error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i16)]
pub enum Code {
    /// No error.
    None = 0,
    /// The offset is before the log start or after its end.
    OffsetOutOfRange = 1,
    /// A record batch could not be parsed.
    CorruptMessage = 2,
    /// No such topic or partition.
    UnknownTopicOrPartition = 3,
    /// The topic name is not valid.
    InvalidTopic = 17,
    /// The member's generation is not the group's.
    IllegalGeneration = 22,
    /// The member's protocols share none with the group's.
    InconsistentGroupProtocol = 23,
    /// The group does not know the member.
    UnknownMemberId = 25,
    /// The group is rebalancing: rejoin.
    RebalanceInProgress = 27,
    /// The API version is not supported.
    UnsupportedVersion = 35,
    /// The topic exists already.
    TopicAlreadyExists = 36,
    /// The partition count is not valid.
    InvalidPartitions = 37,
    /// The request is malformed.
    InvalidRequest = 42,
    /// Not a v2 record batch.
    UnsupportedForMessageFormat = 43,
    /// A gap in an idempotent producer's sequence.
    OutOfOrderSequenceNumber = 45,
    /// An older producer epoch than the partition has seen.
    InvalidProducerEpoch = 47,
    /// Join again with the member id in the response.
    MemberIdRequired = 79,
}

impl Code {
    /// The wire value.
    pub fn value(self) -> i16 {
        self as i16
    }
}
