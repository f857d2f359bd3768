//! Decoding bytes off the wire: whatever arrives, decoding returns a message or a classified
//! poison error — it never panics and never allocates without bound. The same entry points are
//! driven by the cargo-fuzz target in `shared/contracts/fuzz`.

use std::collections::HashMap;

use apache_avro::schema::{Name, Schema};
use apache_avro::types::Value;
use proptest::prelude::*;
use saga_contracts::wire::{decode_body, decode_own_body, limit_allocations, own_type_of, reader_schemas, split, Poison};
use saga_contracts::{Message, TopicKind};

/// Classifies `bytes` as if read from `topic`, with the writer schema of message type `type_index`.
fn classify(type_index: usize, topic: TopicKind, bytes: &[u8]) -> Result<Message, Poison> {
    limit_allocations();
    let readers = reader_schemas();
    let name = Message::FULL_NAMES[type_index % Message::FULL_NAMES.len()];
    let writer = Message::schema_of(name).unwrap();
    let (id, body) = split(Some(bytes))?;
    let resolved = decode_body(&readers, &writer, id, topic, body);
    // The services' fast path for a writer schema that is exactly ours must agree with it.
    let own = own_type_of(&writer).unwrap_or_else(|| panic!("{name}: our own schema is not recognised as ours"));
    let fast = decode_own_body(own, id, topic, body);
    match (&resolved, &fast) {
        (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}"), "{name}: the two decoders read different messages"),
        (Err(a), Err(b)) => assert_eq!(a.class, b.class, "{name}: {a} against {b}"),
        _ => panic!("{name}: the two decoders disagree: {resolved:?} against {fast:?}"),
    }
    resolved
}

fn is_poison(r: &Result<Message, Poison>) -> bool {
    matches!(r, Err(p) if ["not-wire-format", "unexpected-type", "malformed-avro"].contains(&p.class))
}

/// A valid wire-format value of message type `type_index`, with schema id 7.
fn valid(type_index: usize) -> (TopicKind, Vec<u8>) {
    let name = Message::FULL_NAMES[type_index % Message::FULL_NAMES.len()];
    let schema = Message::schema_of(name).unwrap();
    // Any message of that type: decode the all-defaults value the schema allows, or build it.
    let mut names = HashMap::new();
    let value = sample_value(&schema, &mut names);
    let sample = Message::from_avro_value(name, &value).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut bytes = vec![0, 0, 0, 0, 7];
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema).build().unwrap();
    bytes.extend(writer.write_value_to_vec(sample.to_avro_value().unwrap()).unwrap());
    (Message::topic_kind_of(name).unwrap(), bytes)
}

/// A value of `schema` with something in every field (one item per array, the first branch of a
/// union), so every field's encoding is exercised.
fn sample_value(schema: &Schema, names: &mut HashMap<Name, Schema>) -> Value {
    match schema {
        Schema::Record(r) => {
            names.insert(r.name.clone(), schema.clone());
            Value::Record(r.fields.iter().map(|f| (f.name.clone(), sample_value(&f.schema, names))).collect())
        }
        Schema::Ref { name } => {
            let s = names[name].clone();
            sample_value(&s, names)
        }
        Schema::Array(a) => Value::Array(vec![sample_value(&a.items, names)]),
        Schema::Union(u) => Value::Union(0, Box::new(sample_value(&u.variants()[0], names))),
        Schema::String => Value::String("x".into()),
        Schema::Long => Value::Long(1),
        Schema::Int => Value::Int(1),
        Schema::Boolean => Value::Boolean(true),
        Schema::Null => Value::Null,
        Schema::Enum(e) => Value::Enum(0, e.symbols[0].clone()),
        other => panic!("no sample for {other:?}"),
    }
}

#[test]
fn every_message_type_round_trips_through_the_pure_decoder() {
    for i in 0..Message::FULL_NAMES.len() {
        let (topic, bytes) = valid(i);
        let m = classify(i, topic, &bytes).unwrap_or_else(|e| panic!("{}: {e}", Message::FULL_NAMES[i]));
        assert_eq!(m.full_name(), Message::FULL_NAMES[i]);
    }
}

/// Avro's zig-zag varint of `n`.
fn varint(n: i64) -> Vec<u8> {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    let mut out = Vec::new();
    loop {
        let b = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

#[test]
fn a_length_prefix_over_the_limit_is_refused_before_allocating() {
    // 64 MiB: over our 16 MiB limit, under the library's own default (512 MiB), so only our limit
    // refuses it. The first field of every message is the envelope's message id, a string.
    let mut bytes = vec![0, 0, 0, 0, 7];
    bytes.extend(varint(64 << 20));
    for i in 0..Message::FULL_NAMES.len() {
        let topic = Message::topic_kind_of(Message::FULL_NAMES[i]).unwrap();
        let e = classify(i, topic, &bytes).unwrap_err();
        assert!(e.message.contains(&saga_contracts::wire::MAX_AVRO_ALLOCATION_BYTES.to_string()), "{}: {e}", Message::FULL_NAMES[i]);
    }
}

#[test]
fn a_hostile_length_prefix_is_poison_not_a_huge_allocation() {
    // A string field whose zig-zag length claims about 2^60 bytes, right after the magic byte and id.
    let mut bytes = vec![0, 0, 0, 0, 7];
    bytes.extend([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    for i in 0..Message::FULL_NAMES.len() {
        let topic = Message::topic_kind_of(Message::FULL_NAMES[i]).unwrap();
        let r = classify(i, topic, &bytes);
        assert!(is_poison(&r), "{}: {r:?}", Message::FULL_NAMES[i]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary bytes: poison with a class, or (rarely) a message; never a panic.
    #[test]
    fn arbitrary_bytes_are_classified(type_index in 0usize..64, topic in 0usize..6, bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let topic = TopicKind::ALL[topic];
        let mut wire = vec![0, 0, 0, 0, 1];
        wire.extend(&bytes);
        for candidate in [&bytes[..], &wire[..]] {
            let r = classify(type_index, topic, candidate);
            prop_assert!(r.is_ok() || is_poison(&r), "{:?}", r);
        }
    }

    /// A valid value with bytes flipped, cut or appended: never a panic, and never accepted with
    /// trailing garbage.
    #[test]
    fn corrupted_valid_values_are_classified(type_index in 0usize..64, flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8), cut in any::<prop::sample::Index>(), extra in proptest::collection::vec(any::<u8>(), 0..4)) {
        let (topic, mut bytes) = valid(type_index);
        for (at, b) in flips {
            let i = 5 + at.index(bytes.len() - 5);
            bytes[i] ^= b;
        }
        let cut_at = 5 + cut.index(bytes.len() - 4);
        bytes.truncate(cut_at);
        let r = classify(type_index, topic, &bytes);
        prop_assert!(r.is_ok() || is_poison(&r), "{:?}", r);
        if !extra.is_empty() {
            let (topic, mut whole) = valid(type_index);
            whole.extend(&extra);
            let r = classify(type_index, topic, &whole);
            prop_assert!(is_poison(&r), "trailing bytes accepted: {:?}", r);
        }
    }
}

#[test]
fn records_written_with_the_registered_schema_files_decode_the_same_on_both_paths() {
    // What the services' encoder writes: the body per the schema file registered for the type.
    let readers = reader_schemas();
    for (i, name) in Message::FULL_NAMES.iter().enumerate() {
        let file = Schema::parse_str(saga_contracts::schemas::schema_file(name).unwrap()).unwrap();
        let (topic, derived_bytes) = valid(i);
        let message = decode_body(&readers, &Message::schema_of(name).unwrap(), 7, topic, &derived_bytes[5..]).unwrap();
        let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&file).build().unwrap();
        let body = writer.write_value_to_vec(message.to_avro_value().unwrap()).unwrap();
        let resolved = decode_body(&readers, &file, 7, topic, &body).unwrap();
        let own = own_type_of(&file).unwrap_or_else(|| panic!("{name}: the schema file is not recognised as ours"));
        let fast = decode_own_body(own, 7, topic, &body).unwrap();
        assert_eq!(resolved, message, "{name}");
        assert_eq!(fast, resolved, "{name}");
    }
}
