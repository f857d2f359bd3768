//! Metrics after a run: the in-process stack takes seven sample orders (five approved, one out of
//! stock, one declined and compensated), one duplicate and one poison record; then the scrape of
//! every service must count exactly that, and every metric listed in `deploy/config/metrics.txt`
//! (what dashboards and alerts may query) must be exported. Also keeps `deploy/config/topics.txt`
//! (what the Kubernetes topic resources declare) equal to the topics the code uses.

use std::collections::BTreeSet;
use std::time::Duration;

use saga_cli::sample::sample_order;
use saga_contracts::{Message, TopicKind, Topics};
use saga_integration_tests::{options, wait_for_orders, Infra};

fn listed(file: &str) -> Vec<String> {
    let path = format!("{}/../deploy/config/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect()
}

/// The value of the one sample of `metric` whose labels include every pair in `labels`.
fn value(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(matching.len() <= 1, "{metric} {labels:?} matches {} series", matching.len());
    matching.first().copied().unwrap_or(0.0)
}

#[test]
fn the_topic_list_for_deployments_is_the_topics_the_code_uses() {
    let listed: BTreeSet<String> = listed("topics.txt").into_iter().collect();
    let used: BTreeSet<String> = Topics::new("saga").all_with_dlts().into_iter().collect();
    assert_eq!(listed, used, "deploy/config/topics.txt differs from Topics::all_with_dlts()");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scrape_after_a_run_counts_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(Infra::Embedded, dir.path());
    o.query = true;
    let stack = saga_sandbox::stack::Stack::start(o).await.expect("stack starts");
    let orders: Vec<_> = (0..7).map(|i| sample_order("metrics", i).0).collect();
    let ids: Vec<String> = orders.iter().map(|o| o.order_id.clone()).collect();
    for o in &orders {
        stack.publish(&o.clone().into()).await.unwrap();
    }
    // A duplicate (same message id) and a poison record.
    let duplicate: Message = orders[0].clone().into();
    stack.publish(&duplicate).await.unwrap();
    stack.publish_raw(&stack.topic(TopicKind::PaymentCommands), Some(b"k"), b"not avro").await.unwrap();
    wait_for_orders(&stack, &ids, Duration::from_secs(60)).await;

    // Counts settle once the last records are committed and published; gauges once the relay and
    // librdkafka's statistics (every 5 s) have reported.
    let order_commands = stack.topic(TopicKind::OrderCommands);
    let payment_commands = stack.topic(TopicKind::PaymentCommands);
    let order_events = stack.topic(TopicKind::OrderEvents);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = stack.metrics_text().await.expect("metrics");
        let settled = value(&text, "saga_sagas_finished_total", &[("outcome", "compensated")]) == 2.0
            && value(&text, "saga_records_produced_total", &[("service", "order"), ("topic", &order_events)]) == 14.0
            && text.contains("saga_consumer_lag{")
            // librdkafka's statistics (every second) report the consumers' lag late.
            && text.lines().filter(|l| l.starts_with("saga_consumer_lag{")).all(|l| l.ends_with(" 0"))
            && text.contains("saga_kafka_broker_rtt_seconds{")
            && text.contains("saga_projection_lag{")
            && value(&text, "saga_projection_lag_total", &[("service", "query")]) == 0.0
            // The projection's gauges are refreshed every second: 0 until a refresh after an event.
            && value(&text, "saga_projection_newest_event_age_ms", &[("service", "query")]) > 0.0;
        if settled || tokio::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    let orch = [("service", "orchestrator"), ("saga_type", "order")];
    assert_eq!(value(&text, "saga_sagas_started_total", &orch), 7.0, "{text}");
    assert_eq!(value(&text, "saga_sagas_finished_total", &[orch[0], orch[1], ("outcome", "completed")]), 5.0);
    assert_eq!(value(&text, "saga_sagas_finished_total", &[orch[0], orch[1], ("outcome", "compensated")]), 2.0);
    assert_eq!(value(&text, "saga_duration_seconds_count", &[orch[0], ("outcome", "completed")]), 5.0);
    assert!(value(&text, "saga_duration_seconds_sum", &[orch[0], ("outcome", "completed")]) > 0.0);
    // Every reply a saga applied is one step observation (the sagas run definition v2): approved
    // 4 (stock reserved, risk accepted, payment authorized, order approved) × 5, out of stock 2,
    // declined 5 (reserved, risk accepted, declined, released, rejected).
    let steps: f64 =
        text.lines().filter(|l| l.starts_with("saga_step_duration_seconds_count{")).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum();
    assert_eq!(steps, 27.0, "{text}");
    assert_eq!(value(&text, "saga_sagas_in_state", &[orch[0], ("state", "RUNNING")]), 0.0);
    // The order service: 8 PlaceOrder records (one a duplicate) and 7 approvals or rejections.
    assert_eq!(value(&text, "saga_records_consumed_total", &[("service", "order"), ("topic", &order_commands)]), 15.0);
    assert_eq!(value(&text, "saga_inbox_duplicates_total", &[("service", "order"), ("topic", &order_commands)]), 1.0);
    assert_eq!(value(&text, "saga_records_produced_total", &[("service", "order"), ("topic", &order_events)]), 14.0);
    assert_eq!(value(&text, "saga_records_dead_lettered_total", &[("service", "payment"), ("topic", &payment_commands), ("class", "not-wire-format")]), 1.0);
    assert_eq!(value(&text, "saga_outbox_backlog", &[("service", "orchestrator")]), 0.0);
    assert!(value(&text, "saga_consumer_assigned_partitions", &[("service", "payment"), ("topic", &payment_commands)]) >= 1.0);
    let lag: Vec<&str> = text.lines().filter(|l| l.starts_with("saga_consumer_lag{")).collect();
    assert!(!lag.is_empty() && lag.iter().all(|l| l.ends_with(" 0")), "no lag once everything is consumed: {lag:?}");

    // The read model applied every record of the topics it reads.
    assert_eq!(value(&text, "saga_projection_lag_total", &[("service", "query")]), 0.0, "{text}");
    let projection: Vec<&str> = text.lines().filter(|l| l.starts_with("saga_projection_lag{")).collect();
    assert!(projection.iter().any(|l| l.contains(&format!("topic=\"{order_commands}\""))) && projection.iter().all(|l| l.ends_with(" 0")), "{projection:?}");
    assert!(value(&text, "saga_projection_newest_event_age_ms", &[("service", "query")]) > 0.0);

    let exported: BTreeSet<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).filter_map(|l| l.split_whitespace().nth(2)).collect();
    for name in listed("metrics.txt") {
        assert!(exported.contains(name.as_str()), "{name} is in deploy/config/metrics.txt but not exported:\n{text}");
    }
    for name in &exported {
        assert!(listed("metrics.txt").iter().any(|n| n == name), "{name} is exported but missing from deploy/config/metrics.txt");
    }
    stack.stop().await;
}
