//! One trace per saga: the four services run as OS processes exporting OTLP/HTTP (JSON) to a
//! receiver inside this test. For a saga that completes and one that compensates, every span of
//! the saga must be in one trace, from all four services, chained message by message (each
//! consumer's `process` span is a child of the producer's `publish` span, which is a child of the
//! `process` span that wrote the record); and a saga that runs across an orchestrator restart
//! must still be one trace.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use saga_cli::sample::sample_order;
use saga_contracts::PlaceOrder;
use saga_order::domain::OrderStatus;
use saga_sandbox::procs::{terminate, Proc, Sandbox};
use serde_json::Value;

#[derive(Debug, Clone)]
struct SpanRec {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    service: String,
    attrs: HashMap<String, String>,
}

fn attr_value(v: &Value) -> String {
    for k in ["stringValue", "intValue", "boolValue", "doubleValue"] {
        if let Some(x) = v.get(k) {
            return x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string());
        }
    }
    v.to_string()
}

fn attrs(list: Option<&Value>) -> HashMap<String, String> {
    list.and_then(Value::as_array)
        .map(|a| a.iter().map(|kv| (kv["key"].as_str().unwrap_or_default().to_string(), attr_value(&kv["value"]))).collect())
        .unwrap_or_default()
}

/// Parses an OTLP/JSON `ExportTraceServiceRequest`.
fn parse(body: &[u8]) -> Vec<SpanRec> {
    let v: Value = serde_json::from_slice(body).expect("OTLP/JSON body");
    let mut out = Vec::new();
    for rs in v["resourceSpans"].as_array().into_iter().flatten() {
        let service = attrs(rs["resource"].get("attributes")).remove("service.name").unwrap_or_default();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for s in ss["spans"].as_array().into_iter().flatten() {
                out.push(SpanRec {
                    trace_id: s["traceId"].as_str().unwrap_or_default().to_ascii_lowercase(),
                    span_id: s["spanId"].as_str().unwrap_or_default().to_ascii_lowercase(),
                    parent: s["parentSpanId"].as_str().unwrap_or_default().to_ascii_lowercase(),
                    name: s["name"].as_str().unwrap_or_default().to_string(),
                    service: service.clone(),
                    attrs: attrs(s.get("attributes")),
                });
            }
        }
    }
    out
}

/// An OTLP/HTTP receiver on a free port; returns its base URL and what it received.
async fn receiver() -> (String, Arc<Mutex<Vec<SpanRec>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().extend(parse(&body));
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

/// What each service adds to the sandbox's environment: its spans, exported to `otlp`.
fn otel_env(name: &str, otlp: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.into()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
        ("OTEL_SERVICE_NAME", format!("saga-{name}")),
    ]
}

/// The message types of the `process` spans from `leaf` up to the root, root first, checking on
/// the way that each `process` span hangs under a `publish` span under the previous `process`.
fn causal_chain(trace: &[SpanRec], leaf: &SpanRec) -> Vec<String> {
    let by_id: HashMap<&str, &SpanRec> = trace.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut chain = vec![leaf.attrs["messaging.message.type"].clone()];
    let mut at = leaf;
    while let Some(publish) = by_id.get(at.parent.as_str()) {
        assert!(publish.name.ends_with(" publish"), "the parent of {} is {}, not a publish span", at.name, publish.name);
        let producer = by_id.get(publish.parent.as_str()).unwrap_or_else(|| panic!("{} has no parent in the trace", publish.name));
        assert!(producer.name.ends_with(" process"), "the parent of {} is {}", publish.name, producer.name);
        chain.push(producer.attrs["messaging.message.type"].clone());
        at = producer;
    }
    chain.reverse();
    chain
}

/// The spans of one saga: the trace its process spans are in, which must be exactly one.
fn saga_trace(spans: &[SpanRec], order_id: &str) -> (String, Vec<SpanRec>) {
    let traces: BTreeSet<&str> = spans.iter().filter(|s| s.attrs.get("order.id").map(String::as_str) == Some(order_id)).map(|s| s.trace_id.as_str()).collect();
    assert_eq!(traces.len(), 1, "the spans of saga {order_id} are in {} traces: {traces:?}", traces.len());
    let trace = traces.into_iter().next().unwrap().to_string();
    let members = spans.iter().filter(|s| s.trace_id == trace).cloned().collect();
    (trace, members)
}

fn leaf<'a>(trace: &'a [SpanRec], service: &str, message_type: &str) -> &'a SpanRec {
    trace
        .iter()
        .find(|s| s.service == service && s.name.ends_with(" process") && s.attrs.get("messaging.message.type").map(String::as_str) == Some(message_type))
        .unwrap_or_else(|| panic!("no {service} span processing {message_type} in the trace"))
}

#[test]
fn each_saga_is_one_trace_across_all_services_and_an_orchestrator_restart() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (otlp, spans) = rt.block_on(receiver());
    let mut sandbox = Sandbox::start("trace", 2, &rt);
    let start = |name: &str| -> Proc { sandbox.spawn(name, &otel_env(name, &otlp)) };
    let mut running: HashMap<&str, Proc> = ["order", "inventory", "payment", "orchestrator"].into_iter().map(|n| (n, start(n))).collect();

    // A traced client: its traceparent makes the saga part of the client's trace.
    let client_trace = format!("{:032x}", uuid::Uuid::new_v4().as_u128());
    let client_span = format!("{:016x}", uuid::Uuid::new_v4().as_u128() as u64);
    let (happy, _) = sample_order("trace", 0);
    let (declined, _) = sample_order("trace", 6);
    let (after_restart, _) = sample_order("trace", 1);

    let client = rt.block_on(sandbox.client());
    let send = |order: PlaceOrder, traceparent: Option<String>| rt.block_on(client.place(order, traceparent.as_deref()));
    let wait_final = |id: &str| {
        rt.block_on(async {
            let orders = saga_store::Db::connect(&sandbox.db("order"), 1).await.unwrap();
            for _ in 0..600 {
                // Until the order service has migrated its database, the table is missing.
                if saga_order::get_order(&orders, id).await.ok().flatten().is_some_and(|o| o.status != OrderStatus::Pending) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("order {id} did not finish within 60 s");
        })
    };

    send(happy.clone(), Some(format!("00-{client_trace}-{client_span}-01")));
    send(declined.clone(), None);
    wait_final(&happy.order_id);
    wait_final(&declined.order_id);

    // The orchestrator stops; an order placed meanwhile waits for it, and its saga runs in the
    // restarted process.
    terminate(running.remove("orchestrator").unwrap(), sandbox.dir.path());
    send(after_restart.clone(), None);
    std::thread::sleep(Duration::from_secs(1));
    running.insert("orchestrator", start("orchestrator"));
    wait_final(&after_restart.order_id);

    // Stopping flushes each process's spans.
    sandbox.stop(running.into_values());
    let spans = spans.lock().unwrap().clone();
    let services = |trace: &[SpanRec]| trace.iter().map(|s| s.service.clone()).collect::<BTreeSet<_>>();
    let all: BTreeSet<String> = ["saga-inventory", "saga-orchestrator", "saga-order", "saga-payment"].into_iter().map(String::from).collect();

    // Completed saga: in the client's trace, from the client's span down.
    let (trace, members) = saga_trace(&spans, &happy.order_id);
    assert_eq!(trace, client_trace, "the saga joined the trace of the client that placed the order");
    assert_eq!(services(&members), all);
    let roots: Vec<_> = members.iter().filter(|s| !members.iter().any(|p| p.span_id == s.parent)).collect();
    assert_eq!(roots.len(), 1, "one span under the client's, every other under a span of the saga: {roots:?}");
    assert_eq!(roots[0].parent, client_span);
    let chain = causal_chain(&members, leaf(&members, "saga-orchestrator", "OrderApproved"));
    assert_eq!(
        chain,
        [
            "PlaceOrder",
            "OrderCreated",
            "ReserveStock",
            "StockReserved",
            "CheckRisk",
            "RiskAccepted",
            "AuthorizePayment",
            "PaymentAuthorized",
            "ApproveOrder",
            "OrderApproved"
        ]
    );
    let process = leaf(&members, "saga-payment", "AuthorizePayment");
    for (k, v) in [("messaging.system", "kafka"), ("messaging.operation.type", "process"), ("messaging.consumer.group.name", "saga-payment")] {
        assert_eq!(process.attrs.get(k).map(String::as_str), Some(v), "{k} on {}", process.name);
    }
    for k in ["messaging.destination.name", "messaging.destination.partition.id", "messaging.kafka.offset", "messaging.message.id", "saga.id"] {
        assert!(process.attrs.contains_key(k), "{k} missing on {}: {:?}", process.name, process.attrs);
    }

    // Compensated saga: its own trace, started by the order service, compensation included.
    let (trace, members) = saga_trace(&spans, &declined.order_id);
    assert_eq!(services(&members), all);
    let roots: Vec<_> = members.iter().filter(|s| s.parent.is_empty() || !members.iter().any(|p| p.span_id == s.parent)).collect();
    assert_eq!(roots.len(), 1);
    assert!(roots[0].parent.is_empty() && roots[0].service == "saga-order", "the order service starts the trace: {:?}", roots[0]);
    let chain = causal_chain(&members, leaf(&members, "saga-orchestrator", "OrderRejected"));
    assert_eq!(
        chain,
        [
            "PlaceOrder",
            "OrderCreated",
            "ReserveStock",
            "StockReserved",
            "CheckRisk",
            "RiskAccepted",
            "AuthorizePayment",
            "PaymentDeclined",
            "ReleaseStock",
            "StockReleased",
            "RejectOrder",
            "OrderRejected"
        ]
    );
    let saga = rt.block_on(async {
        let sagas = saga_store::Db::connect(&sandbox.db("orchestrator"), 1).await.unwrap();
        saga_orchestrator::store::get_saga(&sagas, &declined.order_id).await.unwrap().unwrap()
    });
    assert_eq!(saga.trace_id(), Some(trace.as_str()), "the saga log keeps the saga's trace");

    // Across the restart: still one trace, through the new orchestrator process.
    let (_, members) = saga_trace(&spans, &after_restart.order_id);
    assert_eq!(services(&members), all);
    let chain = causal_chain(&members, leaf(&members, "saga-orchestrator", "OrderApproved"));
    assert_eq!(chain.first().map(String::as_str), Some("PlaceOrder"));
    assert_eq!(chain.len(), 10, "{chain:?}");
}
