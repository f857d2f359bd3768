"""Interoperability check: a client this project did not write talks to our services.

Produces PlaceOrder records with confluent-kafka-python's AvroSerializer (RecordNameStrategy, the
schema from schemas/) and reads the order events back with its AvroDeserializer, against a running
`sagactl dev` (its broker and registry). Exits non-zero when an order does not reach the expected
outcome in time.
"""

import argparse
import json
import pathlib
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient, record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

ROOT = pathlib.Path(__file__).resolve().parents[2]


def place_order(order_id, customer, lines):
    return {
        "envelope": {
            "message_id": f"py-{uuid.uuid4()}",
            "message_type": "saga.order.PlaceOrder",
            "saga_id": None,
            "correlation_id": order_id,
            "causation_id": None,
            "occurred_at_ms": int(time.time() * 1000),
        },
        "order_id": order_id,
        "customer_id": customer,
        "currency": "EUR",
        "lines": [{"sku": s, "quantity": q, "unit_price_minor": p, "currency": "EUR"} for s, q, p in lines],
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--prefix", default="saga")
    parser.add_argument("--timeout", type=float, default=90)
    args = parser.parse_args()

    registry = SchemaRegistryClient({"url": args.registry})
    schema = (ROOT / "schemas/order/PlaceOrder.avsc").read_text()
    serialize = AvroSerializer(
        registry, schema, conf={"auto.register.schemas": True, "subject.name.strategy": record_subject_name_strategy}
    )
    deserialize = AvroDeserializer(registry)
    commands = f"{args.prefix}.order.commands"
    events = f"{args.prefix}.order.events"

    run = uuid.uuid4().hex[:8]
    expected = {
        f"py-{run}-ok": ("OrderApproved", place_order(f"py-{run}-ok", "alice", [("WIDGET-1", 2, 1250)])),
        f"py-{run}-oos": ("OrderRejected", place_order(f"py-{run}-oos", "alice", [("RARE-GEM", 1000, 10)])),
    }
    producer = Producer({"bootstrap.servers": args.bootstrap})
    for order_id, (_, value) in expected.items():
        payload = serialize(value, SerializationContext(commands, MessageField.VALUE))
        producer.produce(commands, key=order_id.encode(), value=payload)
    if producer.flush(30) != 0:
        sys.exit("interop: PlaceOrder records were not delivered")
    print(f"interop: produced {len(expected)} PlaceOrder records with confluent-kafka-python", flush=True)

    consumer = Consumer(
        {"bootstrap.servers": args.bootstrap, "group.id": f"interop-{run}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([events])
    seen = {}
    created = set()
    deadline = time.time() + args.timeout
    while len(seen) < len(expected) and time.time() < deadline:
        msg = consumer.poll(1.0)
        if msg is None or msg.error():
            continue
        event = deserialize(msg.value(), SerializationContext(events, MessageField.VALUE))
        order_id = event.get("order_id")
        if order_id not in expected:
            continue
        kind = event["envelope"]["message_type"].rsplit(".", 1)[-1]
        if kind == "OrderCreated":
            created.add(order_id)
            assert event["total_minor"] > 0, event
        elif kind in ("OrderApproved", "OrderRejected"):
            seen[order_id] = kind
            print(f"interop: {order_id} -> {kind} {json.dumps(event.get('reason', ''))}", flush=True)
    consumer.close()

    failures = [
        f"{oid}: expected {want}, got {seen.get(oid, 'nothing')}" for oid, (want, _) in expected.items() if seen.get(oid) != want
    ]
    if len(created) != len(expected):
        failures.append(f"OrderCreated decoded for {len(created)} of {len(expected)} orders")
    if failures:
        sys.exit("interop: FAILED: " + "; ".join(failures))
    print("interop: 2 passed, 0 failed")


if __name__ == "__main__":
    main()
