//! The Confluent wire format, without I/O: magic byte 0, a 4-byte big-endian schema id, the Avro
//! body. Looking the schema id up is the caller's business (saga-runtime asks the registry);
//! everything after that — resolving the body against our reader schema and checking that the
//! type belongs on its topic — is here, so it can be fuzzed with arbitrary bytes.
//!
//! Every failure is a [`Poison`] with a class (`not-wire-format`, `unexpected-type`,
//! `malformed-avro`) and a message; nothing panics. Call [`limit_allocations`] once before
//! decoding untrusted bytes, so a hostile length prefix fails instead of allocating gigabytes.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::OnceLock;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::Schema;

use crate::{Message, TopicKind};

/// Most bytes the Avro decoder allocates for one value (a string, bytes or array length prefix).
pub const MAX_AVRO_ALLOCATION_BYTES: usize = 16 * 1024 * 1024;

/// A record that can never be decoded, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    /// Error class, as written into the dead letter's headers.
    pub class: &'static str,
    /// What exactly was wrong.
    pub message: String,
}

impl std::fmt::Display for Poison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class, self.message)
    }
}

impl std::error::Error for Poison {}

fn poison(class: &'static str, message: String) -> Poison {
    Poison { class, message }
}

/// Sets the Avro decoder's allocation limit for this process (idempotent).
pub fn limit_allocations() {
    apache_avro::util::max_allocation_bytes(MAX_AVRO_ALLOCATION_BYTES);
}

/// The reader schema of every message type, by full name, derived from the Rust types.
pub fn reader_schemas() -> HashMap<&'static str, Schema> {
    Message::FULL_NAMES.iter().map(|n| (*n, Message::schema_of(n).expect("every message type has a schema"))).collect()
}

/// Splits a record value into its schema id and Avro body.
pub fn split(payload: Option<&[u8]>) -> Result<(u32, &[u8]), Poison> {
    let bytes = payload.ok_or_else(|| poison("not-wire-format", "record has no value".into()))?;
    if bytes.len() < 5 || bytes[0] != 0 {
        return Err(poison("not-wire-format", format!("value of {} bytes does not start with magic byte 0 and a schema id", bytes.len())));
    }
    Ok((u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]), &bytes[5..]))
}

/// Decodes an Avro `body` written with `writer` (schema id `id`) for a topic of kind `topic`,
/// resolved against our reader schema, refusing trailing bytes.
pub fn decode_body(readers: &HashMap<&'static str, Schema>, writer: &Schema, id: u32, topic: TopicKind, body: &[u8]) -> Result<Message, Poison> {
    let name = writer.name().map(|n| n.fullname(None)).unwrap_or_default();
    let Some((full_name, reader)) = readers.get_key_value(name.as_str()) else {
        return Err(poison("unexpected-type", format!("schema id {id} is {name:?}, which is not a message of this system")));
    };
    belongs(full_name, id, topic)?;
    let decoded = GenericDatumReader::builder(writer).reader_schema(reader).build().and_then(|r| read_all(&r, body));
    finish(full_name, id, body, decoded)
}

/// The message type whose reader schema `writer` is, exactly, if any: a record written with it
/// decodes with [`decode_own_body`]. Compares the schemas whole, so call it once per schema id.
pub fn own_type_of(writer: &Schema) -> Option<&'static str> {
    let name = writer.name()?.fullname(None);
    let (full_name, reader) = own_schemas().get_key_value(name.as_str())?;
    (reader == writer).then_some(*full_name)
}

/// Like [`decode_body`], for a record of `full_name` written with this binary's own schema of
/// it ([`own_type_of`] said so for its schema id): read with a decoder made once per type, so
/// nothing is resolved per record (resolving names and schemata is most of the cost of a small
/// record otherwise). Same result and same poison classes as [`decode_body`].
pub fn decode_own_body(full_name: &'static str, id: u32, topic: TopicKind, body: &[u8]) -> Result<Message, Poison> {
    belongs(full_name, id, topic)?;
    let Some(reader) = own_readers().get(full_name) else {
        return Err(poison("unexpected-type", format!("schema id {id} is {full_name:?}, which is not a message of this system")));
    };
    finish(full_name, id, body, read_all(reader, body))
}

/// Our reader schemas, made once for the process (the decoders of [`own_readers`] borrow them).
fn own_schemas() -> &'static HashMap<&'static str, Schema> {
    static SCHEMAS: OnceLock<HashMap<&'static str, Schema>> = OnceLock::new();
    SCHEMAS.get_or_init(reader_schemas)
}

/// A decoder per message type for records written with exactly our schema of it.
fn own_readers() -> &'static HashMap<&'static str, GenericDatumReader<'static>> {
    static READERS: OnceLock<HashMap<&'static str, GenericDatumReader<'static>>> = OnceLock::new();
    READERS.get_or_init(|| {
        own_schemas().iter().map(|(name, schema)| (*name, GenericDatumReader::builder(schema).build().expect("our own schemas resolve"))).collect()
    })
}

fn belongs(full_name: &str, id: u32, topic: TopicKind) -> Result<(), Poison> {
    if Message::topic_kind_of(full_name) != Some(topic) {
        return Err(poison("unexpected-type", format!("{full_name} (schema id {id}) does not belong on the {} topic", topic.suffix())));
    }
    Ok(())
}

/// One value from `body`, and how many bytes it took.
fn read_all(reader: &GenericDatumReader<'_>, body: &[u8]) -> apache_avro::AvroResult<(apache_avro::types::Value, usize)> {
    let mut cursor = Cursor::new(body);
    let v = reader.read_value(&mut cursor)?;
    Ok((v, cursor.position() as usize))
}

fn finish(full_name: &str, id: u32, body: &[u8], decoded: apache_avro::AvroResult<(apache_avro::types::Value, usize)>) -> Result<Message, Poison> {
    let (value, read) = decoded.map_err(|e| poison("malformed-avro", format!("{full_name} (schema id {id}): {e}")))?;
    if read != body.len() {
        return Err(poison("malformed-avro", format!("{full_name} (schema id {id}): {} trailing bytes", body.len() - read)));
    }
    Message::from_avro_value(full_name, &value).map_err(|e| poison("malformed-avro", format!("{full_name}: {e}")))
}
