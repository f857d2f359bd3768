//! Schema evolution of `PlaceOrder`, both directions, with both versions' code: v2 adds an
//! optional `promotion_code` (default null).
//!
//! - Backward: a service built with v2 reads records written with the released v1 schema (by a
//!   client that was never upgraded); the new field reads as `None`.
//! - Forward: a consumer still built with v1 (its Rust type and reader schema frozen below, as
//!   they were released) reads records written with v2; the new field is skipped.
//!
//! The wire path (`decode_body`, as every service decodes) is used for the v2 reader; the v1
//! reader resolves with the released schema file, as a v1 build embedded it.

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::Schema;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::{from_value, to_value};
use saga_contracts::wire::{decode_body, reader_schemas};
use saga_contracts::{Envelope, Message, OrderLine, PlaceOrder, TopicKind};
use serde::{Deserialize, Serialize};

const V1: &str = include_str!("../../../schemas/released/saga.order.PlaceOrder/v1.avsc");
const V2: &str = include_str!("../../../schemas/released/saga.order.PlaceOrder/v2.avsc");

/// `PlaceOrder` as version 1 of this crate defined it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PlaceOrderV1 {
    envelope: Envelope,
    order_id: String,
    customer_id: String,
    currency: String,
    lines: Vec<OrderLine>,
}

/// Avro binary of `value` written with `schema`.
fn write(schema: &Schema, value: Value) -> Vec<u8> {
    GenericDatumWriter::builder(schema).build().unwrap().write_value_to_vec(value).unwrap()
}

/// Reads `body` written with `writer` as a reader with schema `reader` would.
fn read(writer: &Schema, reader: &Schema, body: &[u8]) -> Result<Value, apache_avro::Error> {
    GenericDatumReader::builder(writer).reader_schema(reader).build()?.read_value(&mut std::io::Cursor::new(body))
}

fn envelope() -> Envelope {
    Envelope {
        message_id: "m1".into(),
        message_type: PlaceOrder::FULL_NAME.into(),
        saga_id: None,
        correlation_id: "o1".into(),
        causation_id: None,
        occurred_at_ms: 1,
    }
}

fn lines() -> Vec<OrderLine> {
    vec![OrderLine { sku: "WIDGET-1".into(), quantity: 2, unit_price_minor: 1250, currency: "EUR".into() }]
}

fn v2_order(promotion_code: Option<&str>) -> PlaceOrder {
    PlaceOrder {
        envelope: envelope(),
        order_id: "o1".into(),
        customer_id: "alice".into(),
        currency: "EUR".into(),
        lines: lines(),
        promotion_code: promotion_code.map(str::to_string),
    }
}

#[test]
fn the_released_v2_is_the_schema_this_build_writes() {
    let current = Message::schema_of(PlaceOrder::FULL_NAME).unwrap();
    assert_eq!(Schema::parse_str(V2).unwrap().canonical_form(), current.canonical_form());
    assert_ne!(Schema::parse_str(V1).unwrap().canonical_form(), current.canonical_form());
}

#[test]
fn a_v2_service_reads_what_a_v1_client_wrote() {
    let v1 = Schema::parse_str(V1).unwrap();
    let old = PlaceOrderV1 { envelope: envelope(), order_id: "o1".into(), customer_id: "alice".into(), currency: "EUR".into(), lines: lines() };
    let body = write(&v1, to_value(&old).unwrap());
    // Not our schema exactly: the services resolve it against ours rather than take the fast path.
    assert_eq!(saga_contracts::wire::own_type_of(&v1), None);
    let decoded = decode_body(&reader_schemas(), &v1, 1, TopicKind::OrderCommands, &body).unwrap();
    assert_eq!(decoded, Message::PlaceOrder(v2_order(None)));
}

#[test]
fn a_v1_consumer_reads_what_a_v2_client_wrote() {
    let (v1, v2) = (Schema::parse_str(V1).unwrap(), Schema::parse_str(V2).unwrap());
    let new = Message::PlaceOrder(v2_order(Some("WINTER-10")));
    let body = write(&v2, new.to_avro_value().unwrap());
    let value = read(&v2, &v1, &body).unwrap();
    let read: PlaceOrderV1 = from_value(&value).unwrap();
    assert_eq!(read, PlaceOrderV1 { envelope: envelope(), order_id: "o1".into(), customer_id: "alice".into(), currency: "EUR".into(), lines: lines() });
    // And the v2 reader keeps the code.
    let decoded = decode_body(&reader_schemas(), &v2, 2, TopicKind::OrderCommands, &body).unwrap();
    assert_eq!(decoded, new);
}

#[test]
fn a_v1_reader_cannot_be_given_a_breaking_v3() {
    // A v3 that made the promotion code required (no default) could not be read from v1 data:
    // resolving a v1 record against it fails, which is what the compatibility gate refuses.
    let v1 = Schema::parse_str(V1).unwrap();
    let mut v3: serde_json::Value = serde_json::from_str(V2).unwrap();
    let field = v3["fields"].as_array_mut().unwrap().last_mut().unwrap();
    field["type"] = serde_json::json!("string");
    field.as_object_mut().unwrap().remove("default");
    let v3 = Schema::parse(&v3).unwrap();
    let old = PlaceOrderV1 { envelope: envelope(), order_id: "o1".into(), customer_id: "alice".into(), currency: "EUR".into(), lines: lines() };
    let body = write(&v1, to_value(&old).unwrap());
    assert!(read(&v1, &v3, &body).is_err());
    assert!(apache_avro::schema_compatibility::SchemaCompatibility::can_read(&v1, &v3).is_err());
}
