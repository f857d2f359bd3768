//! The envelope every message carries.

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

/// Metadata on every command and event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "saga.common")]
pub struct Envelope {
    /// Unique id of this message; consumers dedupe on it, so it is derived, never random, when a
    /// message may be produced again (saga id + step + attempt).
    pub message_id: String,
    /// Full Avro name of the message, e.g. `saga.order.PlaceOrder`.
    pub message_type: String,
    /// The saga this message belongs to; `None` on a `PlaceOrder` from a client.
    pub saga_id: Option<String>,
    /// Ties every message of one business transaction together.
    pub correlation_id: String,
    /// `message_id` of the message that caused this one.
    pub causation_id: Option<String>,
    /// Creation time, milliseconds since the Unix epoch.
    pub occurred_at_ms: i64,
}

impl Envelope {
    /// An envelope for a message caused by `cause`, in the same saga and correlation.
    pub fn caused_by(cause: &Envelope, message_id: String, message_type: &str, saga_id: Option<String>) -> Envelope {
        Envelope {
            message_id,
            message_type: message_type.to_string(),
            saga_id: saga_id.or_else(|| cause.saga_id.clone()),
            correlation_id: cause.correlation_id.clone(),
            causation_id: Some(cause.message_id.clone()),
            occurred_at_ms: now_ms(),
        }
    }
}

impl Envelope {
    /// The envelope of the message a participant emits in answer to `cause`. Its id is derived
    /// from the cause's id and the reply's type, so publishing the answer again after a crash
    /// yields the same id and the receiver dedupes it.
    pub fn reply_to(cause: &Envelope, full_name: &str) -> Envelope {
        let short = full_name.rsplit('.').next().unwrap_or(full_name);
        Envelope::caused_by(cause, format!("{}/{short}", cause.message_id), full_name, None)
    }
}

/// Milliseconds since the Unix epoch: the one timestamp format of envelopes and of every stored
/// timestamp.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
