"""Interoperability check: a client this project did not write talks to our services.

Produces PlaceOrder records with confluent-kafka-python's AvroSerializer (RecordNameStrategy) in
both schema versions side by side: an old producer with the released v1 (no promotion code) and a
new one with v2 (schemas/order/PlaceOrder.avsc); reads the order events back with its
AvroDeserializer, against a running `sagactl dev` (its broker and registry). Then reads the
PlaceOrder records back as an old consumer would, with v1 as its reader schema (v2's field is
dropped), and as a new one (v1's records get the default). Exits non-zero when an order does not
reach the expected outcome in time, or a record does not read as its reader expects.
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


def place_order(order_id, customer, lines, **v2_fields):
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
        **v2_fields,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--prefix", default="saga")
    parser.add_argument("--timeout", type=float, default=90)
    args = parser.parse_args()

    registry = SchemaRegistryClient({"url": args.registry})
    v1 = (ROOT / "schemas/released/saga.order.PlaceOrder/v1.avsc").read_text()
    v2 = (ROOT / "schemas/order/PlaceOrder.avsc").read_text()
    conf = {"auto.register.schemas": True, "subject.name.strategy": record_subject_name_strategy}
    serializers = {"v1": AvroSerializer(registry, v1, conf=conf), "v2": AvroSerializer(registry, v2, conf=conf)}
    deserialize = AvroDeserializer(registry)
    commands = f"{args.prefix}.order.commands"
    events = f"{args.prefix}.order.events"

    run = uuid.uuid4().hex[:8]
    # order id -> (expected outcome, schema version written with, record)
    expected = {
        f"py-{run}-v1-ok": ("OrderApproved", "v1", place_order(f"py-{run}-v1-ok", "alice", [("WIDGET-1", 2, 1250)])),
        f"py-{run}-v2-ok": (
            "OrderApproved",
            "v2",
            place_order(f"py-{run}-v2-ok", "alice", [("WIDGET-1", 1, 1250)], promotion_code="PY-SPRING"),
        ),
        f"py-{run}-oos": ("OrderRejected", "v1", place_order(f"py-{run}-oos", "alice", [("RARE-GEM", 1000, 10)])),
    }
    producer = Producer({"bootstrap.servers": args.bootstrap})
    for order_id, (_, version, value) in expected.items():
        payload = serializers[version](value, SerializationContext(commands, MessageField.VALUE))
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
        f"{oid}: expected {want}, got {seen.get(oid, 'nothing')}" for oid, (want, _, _) in expected.items() if seen.get(oid) != want
    ]
    if len(created) != len(expected):
        failures.append(f"OrderCreated decoded for {len(created)} of {len(expected)} orders")
    failures += read_back_with_both_reader_schemas(args, registry, commands, run, expected, v1, v2)
    if failures:
        sys.exit("interop: FAILED: " + "; ".join(failures))
    print("interop: 4 passed, 0 failed")


def read_back_with_both_reader_schemas(args, registry, commands, run, expected, v1, v2):
    """Reads our PlaceOrder records as an old consumer (reader schema v1) and a new one (v2)."""
    failures = []
    by_type = AvroDeserializer(registry)
    readers = {"v1": AvroDeserializer(registry, v1), "v2": AvroDeserializer(registry, v2)}
    consumer = Consumer(
        {"bootstrap.servers": args.bootstrap, "group.id": f"interop-readers-{run}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([commands])
    read = {}
    deadline = time.time() + 30
    while len(read) < len(expected) and time.time() < deadline:
        msg = consumer.poll(1.0)
        if msg is None or msg.error() or (msg.key() or b"").decode() not in expected:
            continue
        ctx = SerializationContext(commands, MessageField.VALUE)
        if by_type(msg.value(), ctx)["envelope"]["message_type"] != "saga.order.PlaceOrder":
            continue  # the orchestrator's ApproveOrder / RejectOrder travel on the same topic
        read[msg.key().decode()] = {v: readers[v](msg.value(), ctx) for v in readers}
    consumer.close()
    for order_id, (_, version, value) in expected.items():
        if order_id not in read:
            failures.append(f"{order_id}: PlaceOrder not read back")
            continue
        as_v1, as_v2 = read[order_id]["v1"], read[order_id]["v2"]
        if "promotion_code" in as_v1 or as_v1["order_id"] != order_id:
            failures.append(f"{order_id} (written with {version}) read with reader schema v1: {as_v1}")
        if as_v2.get("promotion_code", "absent") != value.get("promotion_code"):
            failures.append(f"{order_id} (written with {version}) read with reader schema v2: {as_v2}")
    if not failures:
        print(
            f"interop: {len(read)} PlaceOrder records read back with reader schemas v1 and v2 "
            "(v1 readers drop the promotion code, v2 readers default it to null)",
            flush=True,
        )
    return failures


if __name__ == "__main__":
    main()
