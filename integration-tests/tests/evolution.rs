//! A rolling upgrade with sagas in flight: the services run as processes, orders stream in from
//! a client that only knows the released v1 of `PlaceOrder` and one that writes v2 (with a
//! promotion code), and half-way the orchestrator is switched from the order saga's definition
//! v1 to v2 (and payment, the participant of v2's new step, is restarted), one instance at a
//! time, while both clients keep publishing.
//!
//! At the end: every saga started before the switch ran v1's steps to its end, every saga
//! started after it ran v2's (with the risk check), every log entry names its saga's version,
//! orders of both schema versions were processed (v2's promotion codes kept), and the chaos
//! checker's invariants hold (nothing lost or applied twice, stock and credit conserved, every
//! offset committed, nothing dead-lettered).
//!
//! Embedded: the in-process broker, SQLite, one instance per service. tansu + PostgreSQL: two
//! instances per service, upgraded one after the other within their consumer group.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use saga_cli::sample::{sample_order, Expect};
use saga_contracts::{Message, PlaceOrder, TopicKind};
use saga_integration_tests::chaos::checker::{self, Dbs, Snapshot};
use saga_integration_tests::chaos::load::Placed;
use saga_integration_tests::{options, Infra};
use saga_sandbox::stack::{DatabaseChoice, Stack};
use schema_registry_converter::async_impl::avro::AvroEncoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{SchemaType, SubjectNameStrategy, SuppliedSchema};

const PLACE_ORDER_V1: &str = include_str!("../../schemas/released/saga.order.PlaceOrder/v1.avsc");
/// Orders placed before the upgrade starts, and after it is done; more go in while it runs.
const ORDERS_BEFORE: usize = 30;
const ORDERS_AFTER: usize = 30;
const RATE_PER_SEC: f64 = 15.0;

saga_integration_tests::scenarios!(rolling_upgrade_to_saga_v2_with_both_schema_versions_live);

/// Which schema version a client wrote an order with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    V1,
    V2,
}

/// The two clients: one encodes with the released v1 schema (it never heard of promotion codes),
/// one with this build's (v2).
struct Clients {
    v1: AvroEncoder,
    v2: Arc<saga_runtime::codec::Codec>,
    producer: FutureProducer,
    topic: String,
}

impl Clients {
    async fn place(&self, order: &PlaceOrder, writer: Writer) {
        let payload = match writer {
            Writer::V2 => self.v2.encode(&Message::PlaceOrder(order.clone())).await.expect("v2 encodes"),
            Writer::V1 => {
                let mut value = Message::PlaceOrder(order.clone()).to_avro_value().expect("to a value");
                let apache_avro::types::Value::Record(fields) = &mut value else { panic!("a record") };
                fields.retain(|(name, _)| name != "promotion_code");
                let schema = SuppliedSchema::new(Some(PlaceOrder::FULL_NAME.into()), SchemaType::Avro, PLACE_ORDER_V1.into());
                self.v1.encode_value(value, &SubjectNameStrategy::RecordNameStrategyWithSchema(schema)).await.expect("v1 encodes")
            }
        };
        let record = FutureRecord::to(&self.topic).key(&order.order_id).payload(&payload);
        self.producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).expect("order published");
    }
}

/// The `i`-th order: the sample mix, every ninth a large one that v2's risk check rejects (and
/// that v1's payment declines: both compensate it), every other one written with v2.
fn order(i: usize) -> (PlaceOrder, Expect, Writer) {
    let (mut order, mut expect) = sample_order("evo", i);
    if i % 9 == 4 {
        order.lines = vec![saga_cli::sample::line("WIDGET-1", 500, 1250)];
        order.customer_id = "bob".into();
        expect = Expect::Declined;
    }
    let writer = if i % 2 == 0 { Writer::V1 } else { Writer::V2 };
    if writer == Writer::V2 {
        order.promotion_code = Some(format!("PROMO-{i}"));
    }
    (order, expect, writer)
}

async fn rolling_upgrade_to_saga_v2_with_both_schema_versions_live(infra: Infra) {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(infra, dir.path());
    let bins = saga_sandbox::procs::binary("saga-orchestrator").parent().unwrap().to_path_buf();
    o.processes = Some(bins);
    // The configuration before the upgrade: new sagas start on v1.
    o.order_version = 1;
    if matches!(o.database, DatabaseChoice::Postgres) {
        o.instances = 2;
    }
    let instances = o.instances;
    let group_suffix = o.group_suffix.clone();
    let initial_stock: BTreeMap<String, i64> = o.seed.stock.iter().map(|s| (s.sku.clone(), s.on_hand)).collect();
    let mut stack = Stack::start(o).await.expect("stack starts");

    let clients = Arc::new(Clients {
        v1: AvroEncoder::new(SrSettings::new(stack.registry_url.clone())),
        v2: stack.codec(),
        producer: saga_runtime::kafka::producer(&stack.settings.kafka, "evolution-clients").unwrap(),
        topic: stack.topic(TopicKind::OrderCommands),
    });
    // The clients publish at a steady rate from before the upgrade until ORDERS_AFTER orders went
    // in after it was done.
    let upgraded = Arc::new(tokio::sync::Notify::new());
    let placing = {
        let (clients, upgraded) = (clients.clone(), upgraded.clone());
        tokio::spawn(async move {
            let (start, mut placed, mut after) = (tokio::time::Instant::now(), Vec::new(), None::<usize>);
            let mut done = std::pin::pin!(upgraded.notified());
            for i in 0.. {
                if after.is_none() && futures::poll!(done.as_mut()).is_ready() {
                    after = Some(i);
                }
                if after.is_some_and(|a| i >= a + ORDERS_AFTER) {
                    break;
                }
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / RATE_PER_SEC)).await;
                let (order, expect, writer) = order(i);
                clients.place(&order, writer).await;
                placed.push((order, expect, writer));
            }
            placed
        })
    };

    // After ORDERS_BEFORE orders, the rolling upgrade: payment first (the participant of v2's
    // new step must be up before any saga can send it a CheckRisk), then the orchestrator, one
    // instance at a time, each switched to start new sagas on v2.
    tokio::time::sleep(Duration::from_secs_f64(ORDERS_BEFORE as f64 / RATE_PER_SEC)).await;
    let name = |service: &str, i: usize| if instances > 1 { format!("{service}-{i}") } else { service.to_string() };
    for i in 0..instances {
        stack.restart_process(&name("payment", i), &[]).await.expect("payment restarts");
    }
    let switch_started = saga_contracts::now_ms();
    for i in 0..instances {
        stack.restart_process(&name("orchestrator", i), &[("SAGA_SAGA__ORDER_VERSION", "2".into())]).await.expect("orchestrator restarts on v2");
    }
    let switch_done = saga_contracts::now_ms();
    upgraded.notify_one();
    let orders = placing.await.expect("every order placed");

    let ids: Vec<String> = orders.iter().map(|(o, _, _)| o.order_id.clone()).collect();
    saga_integration_tests::wait_for_orders(&stack, &ids, Duration::from_secs(180)).await;

    // Each saga ran the definition it started on, to its end.
    let (mut before, mut after, mut risk_rejected) = (0, 0, 0);
    for id in &ids {
        let saga = saga_orchestrator::store::get_saga(&stack.dbs.orchestrator, id).await.unwrap().expect("every order has a saga");
        let log = saga_orchestrator::store::saga_log(&stack.dbs.orchestrator, id).await.unwrap();
        let definition = saga_orchestrator::Orchestrator::default().versions().get(saga.definition_version).cloned().expect("a known version");
        if saga.created_at_ms < switch_started {
            assert_eq!(saga.definition_version, 1, "{id} started before the switch");
            before += 1;
        } else if saga.created_at_ms > switch_done {
            assert_eq!(saga.definition_version, 2, "{id} started after the switch");
            after += 1;
        }
        let steps: Vec<&str> = definition.steps.iter().map(|s| s.name).collect();
        for e in &log {
            assert_eq!(e.definition_version, saga.definition_version, "{id}: log entry {} names another version", e.seq);
            let step = e.step.as_deref().unwrap_or("-");
            assert!(steps.contains(&step) || step == "finalize" || step == "-", "{id} (v{}): step {step} is not in its definition", saga.definition_version);
        }
        let reserved = log.iter().any(|e| e.event == "step-succeeded" && e.step.as_deref() == Some("reserve_stock"));
        let checked = log.iter().any(|e| e.step.as_deref() == Some("check_risk"));
        assert_eq!(checked, reserved && saga.definition_version == 2, "{id} (v{}): risk check {checked}, reserved {reserved}", saga.definition_version);
        risk_rejected += usize::from(log.iter().any(|e| e.event == "step-failed" && e.step.as_deref() == Some("check_risk")));
    }
    assert!(before > 0 && after > 0, "sagas on v1 before the switch: {before}, on v2 after it: {after}");
    assert!(risk_rejected > 0, "no v2 saga was rejected by the risk check");

    // Both schema versions were processed: v2's promotion codes are kept, v1's orders have none.
    let (mut v1_orders, mut v2_orders) = (0, 0);
    for (order, _, writer) in &orders {
        let stored = saga_order::get_order(&stack.dbs.order, &order.order_id).await.unwrap().expect("stored");
        assert_eq!(stored.promotion_code, order.promotion_code, "{}", order.order_id);
        match writer {
            Writer::V1 => v1_orders += 1,
            Writer::V2 => v2_orders += 1,
        }
    }

    // Nothing lost, nothing applied twice, nothing dead-lettered.
    let dbs = Dbs {
        order: stack.dbs.order.clone(),
        inventory: stack.dbs.inventory.clone(),
        payment: stack.dbs.payment.clone(),
        orchestrator: stack.dbs.orchestrator.clone(),
    };
    let placed: Vec<Placed> = orders.iter().map(|(o, expect, _)| Placed { order_id: o.order_id.clone(), lines: o.lines.clone(), expect: *expect }).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let verdict = loop {
        let mut snap = Snapshot::default();
        checker::gather(&dbs, &stack.settings.kafka, &stack.topics, &group_suffix, &mut snap).await.expect("state readable");
        let verdict = checker::check(&snap, &placed, &initial_stock, &[]);
        // Offsets are committed shortly after the last batch: give them a moment.
        if verdict.violations.is_empty() || tokio::time::Instant::now() > deadline {
            break verdict;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "evolution: {} sagas ({before} on v1 before the switch, {after} on v2 after it, {risk_rejected} rejected by v2's risk check); \
         {v1_orders} orders written with PlaceOrder v1, {v2_orders} with v2; completed={} compensated={} unintended={}",
        ids.len(),
        verdict.completed,
        verdict.compensated,
        verdict.unexpected_outcomes.len()
    );
    assert!(verdict.violations.is_empty(), "invariants broken: {:#?}", verdict.violations);
    assert_eq!(verdict.completed + verdict.compensated, orders.len());
    assert!(verdict.unexpected_outcomes.len() * 20 <= orders.len(), "more than 5% ended otherwise than intended: {:#?}", verdict.unexpected_outcomes);
    stack.stop().await;
}
