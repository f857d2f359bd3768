//! Arbitrary bytes off the wire: the first byte picks the writer schema (as if the registry had
//! answered with that message type's schema), the second the topic, the rest is the record value.
//! Decoding must return a message or a classified poison error: no panic, and no allocation past
//! the limit (libFuzzer's -rss_limit_mb catches one).
#![no_main]

use libfuzzer_sys::fuzz_target;
use saga_contracts::wire::{decode_body, limit_allocations, reader_schemas, split};
use saga_contracts::{Message, TopicKind};

fuzz_target!(|data: &[u8]| {
    let [type_byte, topic_byte, value @ ..] = data else { return };
    limit_allocations();
    let name = Message::FULL_NAMES[*type_byte as usize % Message::FULL_NAMES.len()];
    let writer = Message::schema_of(name).expect("every message type has a schema");
    let topic = TopicKind::ALL[*topic_byte as usize % TopicKind::ALL.len()];
    if let Ok((id, body)) = split(Some(value)) {
        match decode_body(&reader_schemas(), &writer, id, topic, body) {
            Ok(message) => assert_eq!(message.full_name(), name),
            Err(poison) => assert!(["unexpected-type", "malformed-avro"].contains(&poison.class), "{poison}"),
        }
    }
});
