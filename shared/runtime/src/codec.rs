//! The Confluent wire format: magic byte 0, a 4-byte big-endian schema id, the Avro body.
//!
//! Encoding registers each message type's schema under its record name (RecordNameStrategy) and
//! caches the id. Decoding classifies every failure: a record that can never be read is
//! [`DecodeError::Poison`]; a registry that cannot be reached is [`DecodeError::Retryable`].

use std::collections::HashMap;

use apache_avro::Schema;
use saga_contracts::{schemas, Message, TopicKind};
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SubjectNameStrategy, SuppliedSchema};

use crate::config::RegistrySettings;

/// Most bytes the Avro decoder allocates for one value; set by [`Codec::connect`].
pub use saga_contracts::wire::MAX_AVRO_ALLOCATION_BYTES;

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The record can never be processed; it belongs in the dead-letter topic.
    #[error("{class}: {message}")]
    Poison {
        /// Short machine-readable class, e.g. `not-wire-format`.
        class: &'static str,
        /// What exactly is wrong.
        message: String,
    },
    /// The registry could not answer; try again later.
    #[error("schema registry unavailable: {0}")]
    Retryable(String),
}

/// Why a message could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("encoding {message_type} failed: {source}")]
pub struct EncodeError {
    /// The message type.
    pub message_type: &'static str,
    /// The registry's or encoder's error.
    #[source]
    pub source: SRCError,
}

impl EncodeError {
    /// True when the registry may answer later.
    pub fn is_retryable(&self) -> bool {
        matches!(classify(&self.source), RegistryFailure::Unavailable)
    }
}

/// What a failed registry call means for the record that needed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RegistryFailure {
    /// Not reached, or it answered with a server error or "try later": retry.
    Unavailable,
    /// It answered that the schema does not exist.
    NotFound,
    /// It answered with a refusal, or with a schema this decoder cannot use: retrying cannot help.
    Unusable,
}

/// Classifies a registry error. Transport failures are marked retriable by the client library;
/// answered failures carry the HTTP status in their message.
fn classify(e: &SRCError) -> RegistryFailure {
    if e.retriable {
        return RegistryFailure::Unavailable;
    }
    let status = e.error.split("failed with status ").nth(1).and_then(|rest| rest.get(..3)).and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(404) => RegistryFailure::NotFound,
        Some(408 | 429) | Some(500..=599) => RegistryFailure::Unavailable,
        Some(_) => RegistryFailure::Unusable,
        // The registry answered 2xx, but with a schema of another type or one that does not parse.
        None => RegistryFailure::Unusable,
    }
}

/// An HTTP client for the registry that trusts the configured CA (besides the system's roots).
pub fn registry_http_client(registry: &RegistrySettings) -> Result<reqwest::ClientBuilder, String> {
    let mut builder = reqwest::Client::builder();
    if !registry.ca_location.is_empty() {
        let pem = std::fs::read(&registry.ca_location).map_err(|e| format!("registry.ca_location {}: {e}", registry.ca_location))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("registry.ca_location {}: {e}", registry.ca_location))?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder)
}

/// Encodes and decodes [`Message`]s through a schema registry.
pub struct Codec {
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    /// Reader schemas, derived from the Rust types: every record is resolved against these, so a
    /// record written with an older or newer compatible schema still decodes.
    readers: HashMap<&'static str, Schema>,
    /// Per schema id: the message type whose reader schema it is exactly, if any. Such records
    /// (all of them while writers and readers run one version) decode without resolving a schema
    /// per record ([`saga_contracts::wire::decode_own_body`]).
    own: std::sync::RwLock<HashMap<u32, Option<&'static str>>>,
}

impl Codec {
    /// A codec for the registry at `url`, without authentication.
    pub fn new(registry_url: &str) -> Result<Codec, SRCError> {
        Codec::connect(&RegistrySettings::at(registry_url))
    }

    /// A codec for the configured registry: its URL, the CA to trust, and basic authentication.
    pub fn connect(registry: &RegistrySettings) -> Result<Codec, SRCError> {
        limit_allocations();
        let http = registry_http_client(registry).map_err(|e| SRCError::non_retryable_without_cause(&e))?;
        let mut builder = SrSettings::new_builder(registry.url.clone());
        builder.set_timeout(std::time::Duration::from_secs(5));
        if !registry.username.is_empty() {
            builder.set_basic_authorization(&registry.username, Some(&registry.password));
        }
        let settings = builder.build_with(http)?;
        let readers = reader_schemas();
        Ok(Codec { encoder: AvroEncoder::new(settings.clone()), decoder: AvroDecoder::new(settings), readers, own: Default::default() })
    }

    fn strategy(full_name: &'static str) -> SubjectNameStrategy {
        let text = schemas::schema_file(full_name).expect("every message type has a schema file");
        SubjectNameStrategy::RecordNameStrategyWithSchema(SuppliedSchema::new(Some(full_name.to_string()), SchemaType::Avro, text.to_string()))
    }

    /// Registers the schemas of `types` (or finds them registered) so the first encode is fast and
    /// a registry problem shows at startup.
    pub async fn register(&self, types: &[&'static str]) -> Result<(), EncodeError> {
        for t in types {
            self.encoder.get_schema_and_id(t, Self::strategy(t)).await.map_err(|source| EncodeError { message_type: t, source })?;
        }
        Ok(())
    }

    /// Encodes a message in the Confluent wire format with its registered schema id.
    pub async fn encode(&self, message: &Message) -> Result<Vec<u8>, EncodeError> {
        let full_name = message.full_name();
        let strategy = Self::strategy(full_name);
        let value = message
            .to_avro_value()
            .map_err(|e| EncodeError { message_type: full_name, source: SRCError::non_retryable_with_cause(e, "could not convert to an Avro value") })?;
        self.encoder.encode_value(value, &strategy).await.map_err(|source| {
            if source.retriable || source.cached {
                self.encoder.remove_errors_from_cache();
            }
            EncodeError { message_type: full_name, source }
        })
    }

    /// Decodes a record read from a topic of kind `topic`, checking that its type belongs there.
    pub async fn decode(&self, topic: TopicKind, payload: Option<&[u8]>) -> Result<Message, DecodeError> {
        let (id, body) = saga_contracts::wire::split(payload)?;
        let writer = match self.decoder.get_schema(id).await {
            Ok(s) => s,
            Err(e) => match classify(&e) {
                RegistryFailure::NotFound => return Err(poison("unknown-schema-id", format!("schema id {id} is not in the registry"))),
                RegistryFailure::Unusable => return Err(poison("unusable-schema", format!("schema id {id} cannot be used: {e}"))),
                RegistryFailure::Unavailable => {
                    // Never let a transient failure stick in the decoder's error cache.
                    self.decoder.remove_errors_from_cache();
                    return Err(DecodeError::Retryable(format!("looking up schema id {id}: {e}")));
                }
            },
        };
        let known = self.own.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&id).copied();
        let own = known.unwrap_or_else(|| {
            let own = saga_contracts::wire::own_type_of(&writer.parsed);
            self.own.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, own);
            own
        });
        Ok(match own {
            Some(full_name) => saga_contracts::wire::decode_own_body(full_name, id, topic, body)?,
            None => saga_contracts::wire::decode_body(&self.readers, &writer.parsed, id, topic, body)?,
        })
    }
}

pub use saga_contracts::wire::{limit_allocations, reader_schemas};

impl From<saga_contracts::wire::Poison> for DecodeError {
    fn from(p: saga_contracts::wire::Poison) -> Self {
        DecodeError::Poison { class: p.class, message: p.message }
    }
}

fn poison(class: &'static str, message: String) -> DecodeError {
    DecodeError::Poison { class, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: &str) -> SRCError {
        SRCError::non_retryable_with_cause("body", &format!("HTTP request to schema registry failed with status {status}"))
    }

    #[test]
    fn registry_failures_are_classified() {
        let unreachable = SRCError::retryable_with_cause(std::io::Error::other("refused"), "http call to schema registry failed");
        assert_eq!(classify(&unreachable), RegistryFailure::Unavailable);
        assert_eq!(classify(&answered("404 Not Found")), RegistryFailure::NotFound);
        assert_eq!(classify(&answered("500 Internal Server Error")), RegistryFailure::Unavailable);
        assert_eq!(classify(&answered("503 Service Unavailable")), RegistryFailure::Unavailable);
        assert_eq!(classify(&answered("429 Too Many Requests")), RegistryFailure::Unavailable);
        assert_eq!(classify(&answered("401 Unauthorized")), RegistryFailure::Unusable);
        assert_eq!(classify(&SRCError::non_retryable_without_cause("type Protobuf, is not correct")), RegistryFailure::Unusable);
    }

    #[tokio::test]
    async fn bytes_that_are_not_the_wire_format_are_poison_without_asking_the_registry() {
        let codec = Codec::new("http://127.0.0.1:9").unwrap();
        for bytes in [&b""[..], b"{}", &[1, 0, 0, 0, 1, 2], &[0, 0, 0]] {
            match codec.decode(TopicKind::OrderCommands, Some(bytes)).await {
                Err(DecodeError::Poison { class: "not-wire-format", .. }) => {}
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
        assert!(matches!(codec.decode(TopicKind::OrderCommands, None).await, Err(DecodeError::Poison { .. })));
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_retryable_not_poison() {
        let codec = Codec::new("http://127.0.0.1:9").unwrap();
        let r = codec.decode(TopicKind::OrderCommands, Some(&[0, 0, 0, 0, 1, 2])).await;
        assert!(matches!(r, Err(DecodeError::Retryable(_))), "{r:?}");
    }
}
