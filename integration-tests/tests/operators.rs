//! Deadlines, STUCK and PARKED sagas, and `sagactl sagas` run by an operator, with the services as
//! separate processes on a broker hosted by this test (the mock cluster on a real TCP port).
//!
//! Inventory is down at first. Order A's reservation times out, its release is never confirmed,
//! and after its attempts the saga is STUCK. A poison reply keyed by order B is dead-lettered by
//! the orchestrator, which PARKs saga B. The operator finds both with `sagactl`, aborts B and
//! retries A, and retries A once more from the saga view's API (with the operator token; without
//! it the view refuses); once inventory is back, both end compensated with every unit of stock in
//! place, the late reservations included.

use std::process::Command;
use std::time::Duration;

use rdkafka::producer::FutureRecord;
use saga_cli::sample::sample_order;
use saga_contracts::TopicKind;
use saga_orchestrator::saga::Status;
use saga_sandbox::procs::{binary, free_port, http_post, Sandbox};

/// Runs sagactl; returns (success, stdout + stderr).
fn sagactl(args: &[&str], env: &[(&str, String)]) -> (bool, String) {
    let out = Command::new(binary("sagactl")).args(args).env_clear().envs(env.iter().map(|(k, v)| (*k, v.as_str()))).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

async fn wait_for_status(db: &saga_store::Db, id: &str, want: Status, log_dir: &std::path::Path) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = saga_orchestrator::store::get_saga(db, id).await.unwrap();
        if s.as_ref().is_some_and(|s| s.state.status == want) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(log_dir.join("saga-orchestrator.log")).unwrap_or_default();
            panic!("saga {id} never became {want:?} (now {:?}); orchestrator log:\n{}", s.map(|s| s.state), &log[log.len().saturating_sub(4000)..]);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn operators_find_stuck_and_parked_sagas_and_retry_or_abort_them() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut sandbox = Sandbox::start("ops", 2, &rt);
    let (dir, registry_url, db) = (sandbox.dir.path(), sandbox.registry_url.clone(), |name: &str| sandbox.db(name));
    let stock_before = rt.block_on(async {
        let inventory = saga_store::Db::connect(&db("inventory"), 1).await.unwrap();
        saga_inventory::stock_of(&inventory, "WIDGET-1").await.unwrap()
    });

    // The orchestrator serves the saga view, with retry and abort for holders of this token.
    let (view_port, token) = (free_port().expect("a free port"), "ops-token-0123456789".to_string());
    let env = |name: &str| {
        let view = if name == "orchestrator" { format!("127.0.0.1:{view_port}") } else { String::new() };
        let token = if name == "orchestrator" { token.clone() } else { String::new() };
        vec![
            ("SAGA_HTTP__OPERATOR_TOKEN", token),
            ("SAGA_HTTP__BIND", view),
            // Each wait 3 s (doubling, at most 3 s); a compensation gets two attempts.
            ("SAGA_SAGA__STEP_TIMEOUT_MS", "3000".into()),
            ("SAGA_SAGA__RETRY_MAX_DELAY_MS", "3000".into()),
            ("SAGA_SAGA__COMPENSATION_MAX_ATTEMPTS", "2".into()),
            ("SAGA_SAGA__TIMER_INTERVAL_MS", "50".into()),
        ]
    };
    let mut services: Vec<_> = ["order", "payment", "orchestrator"].into_iter().map(|s| sandbox.spawn(s, &env(s))).collect();

    let (a, b) = (sample_order("ops", 0).0, sample_order("ops", 1).0);
    let (a_id, b_id) = (a.order_id.clone(), b.order_id.clone());
    let orchestrator_db = rt.block_on(async {
        let client = sandbox.client().await;
        client.place(a, None).await;
        client.place(b, None).await;
        let orchestrator = saga_store::Db::connect(&db("orchestrator"), 1).await.unwrap();
        wait_for_status(&orchestrator, &b_id, Status::Running, dir).await;
        // A reply for B that no decoder can read: the orchestrator dead-letters it and parks B.
        let mut kafka = saga_runtime::ServiceSettings::defaults_for("test").kafka;
        kafka.bootstrap_servers = sandbox.broker.bootstrap.clone();
        let producer = saga_runtime::kafka::producer(&kafka, "poison").unwrap();
        let topic = sandbox.broker.topics.name(TopicKind::InventoryEvents);
        producer.send(FutureRecord::to(&topic).key(&b_id).payload("not avro"), Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
        wait_for_status(&orchestrator, &b_id, Status::Parked, dir).await;
        wait_for_status(&orchestrator, &a_id, Status::Stuck, dir).await;
        orchestrator
    });

    let db_arg = db("orchestrator");
    let ops_env = vec![("SAGA_REGISTRY__URL", registry_url.clone()), ("SAGA_TOPICS__PREFIX", "ops".to_string())];
    let run = |args: &[&str]| {
        let mut all = vec!["sagas", "--db", db_arg.as_str()];
        all.extend_from_slice(args);
        sagactl(&all, &ops_env)
    };

    // Found by state, with the reason.
    let (ok, stuck) = run(&["list", "--state", "stuck"]);
    assert!(ok && stuck.contains(&a_id) && stuck.contains("gave up after 2 attempts") && !stuck.contains(&b_id), "{stuck}");
    let (ok, parked) = run(&["list", "--state", "PARKED"]);
    assert!(ok && parked.contains(&b_id) && parked.contains("ops.inventory.events.dlt/") && parked.contains("not-wire-format"), "{parked}");
    let (ok, shown) = run(&["show", &a_id]);
    for event in ["started", "step-timed-out", "compensation-retried", "stuck"] {
        assert!(ok && shown.contains(event), "show lacks {event}: {shown}");
    }

    // Abort: A is already compensating, so it is refused; B's plan, then B aborted.
    let (ok, refused) = run(&["abort", &a_id, "--dry-run"]);
    assert!(!ok && refused.contains("already compensating"), "{refused}");
    let (ok, plan) = run(&["abort", &b_id, "--dry-run"]);
    let want = [
        format!("1. ReleaseStock (undo of step reserve_stock) key {b_id}:reserve_stock:undo:1"),
        format!("2. RejectOrder (finalize of step finalize) key {b_id}:finalize:finalize:1"),
    ];
    assert!(ok && want.iter().all(|w| plan.contains(w.as_str())), "{plan}");
    assert_eq!(
        rt.block_on(saga_orchestrator::store::get_saga(&orchestrator_db, &b_id)).unwrap().unwrap().state.status,
        Status::Parked,
        "a dry run changes nothing"
    );
    let (ok, aborted) = run(&["abort", &b_id, "--reason", "customer called"]);
    assert!(ok && aborted.contains(&format!("sent ReleaseStock {b_id}:reserve_stock:undo:1 to ops.inventory.commands")), "{aborted}");
    let (ok, retried) = run(&["retry", &a_id]);
    assert!(ok && retried.contains(&format!("{a_id}:reserve_stock:undo:3")) && retried.contains("STUCK -> COMPENSATING"), "{retried}");
    let asked = rt.block_on(saga_orchestrator::store::saga_log(&orchestrator_db, &a_id)).unwrap().pop().unwrap();
    assert!(asked.cause_message_id.as_deref().is_some_and(|who| who.starts_with("sagactl (user ")), "the log says who asked: {asked:?}");

    // The saga view's actions: refused without the token or with a wrong one, done with it, and
    // the saga log says the view asked.
    let bearer = format!("Bearer {token}");
    let path = format!("/api/sagas/{a_id}/retry");
    let refused = http_post(view_port, &path, &[], "{}");
    assert!(refused.starts_with("HTTP/1.1 401") && refused.contains("operator token is required"), "{refused}");
    let wrong = http_post(view_port, &path, &[("Authorization", "Bearer ops-token-0123456780")], "{}");
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let plan = http_post(view_port, &format!("/api/sagas/{a_id}/abort"), &[("Authorization", &bearer)], r#"{"dry_run": true}"#);
    assert!(plan.starts_with("HTTP/1.1 409") && plan.contains("already compensating"), "an abort of a compensating saga is refused: {plan}");
    let done = http_post(view_port, &path, &[("Authorization", &bearer)], "{}");
    assert!(done.starts_with("HTTP/1.1 200") && done.contains(&format!("{a_id}:reserve_stock:undo:4")), "{done}");
    let asked = rt.block_on(saga_orchestrator::store::saga_log(&orchestrator_db, &a_id)).unwrap().pop().unwrap();
    assert_eq!((asked.event.as_str(), asked.cause_message_type.as_deref()), ("operator-retried", Some("operator")));
    assert_eq!(asked.cause_message_id.as_deref(), Some("saga view (operator token)"));

    // The definitions, and which versions are in flight: A (STUCK) and B (COMPENSATING) run v2.
    let (ok, defs) = sagactl(&["definitions"], &[]);
    assert!(ok && defs.contains("order v1: 3 step(s)") && defs.contains("order v2: 4 step(s)") && defs.contains("check_risk"), "{defs}");
    let (ok, json) = sagactl(&["definitions", "--json"], &[]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert!(ok && json["starting"] == 2 && json["definitions"].as_array().map(Vec::len) == Some(2), "{json}");
    let (ok, in_flight) = sagactl(&["definitions", "in-flight", "--db", db_arg.as_str()], &[]);
    assert!(ok && in_flight.contains("v1: 0 saga(s) in flight; may be retired") && in_flight.contains("v2: 2 saga(s) in flight"), "{in_flight}");
    assert!(in_flight.contains(&a_id) && in_flight.contains(&b_id), "{in_flight}");
    let (ok, _) = sagactl(&["definitions", "in-flight", "--db", db_arg.as_str(), "--version", "2"], &[]);
    assert!(!ok, "version 2 has sagas in flight: it cannot be retired");
    let (ok, v1) = sagactl(&["definitions", "in-flight", "--db", db_arg.as_str(), "--version", "1"], &[]);
    assert!(ok && v1.contains("may be retired"), "{v1}");

    // Clear errors.
    let (ok, unknown) = run(&["retry", "no-such-order"]);
    assert!(!ok && unknown.contains("no saga \"no-such-order\""), "{unknown}");
    let (ok, bad) = run(&["list", "--state", "stuk"]);
    assert!(!ok && bad.contains("stuk"), "{bad}");
    let (ok, no_db) = sagactl(&["sagas", "--db", "sqlite:///nonexistent/dir/o.db", "list"], &[]);
    assert!(!ok && no_db.contains("no orchestrator database"), "{no_db}");

    // Inventory comes back: the late reservations land first and are released; both end rejected.
    services.push(sandbox.spawn("inventory", &env("inventory")));
    rt.block_on(async {
        wait_for_status(&orchestrator_db, &a_id, Status::Compensated, dir).await;
        wait_for_status(&orchestrator_db, &b_id, Status::Compensated, dir).await;
        let orders = saga_store::Db::connect(&db("order"), 1).await.unwrap();
        let inventory = saga_store::Db::connect(&db("inventory"), 1).await.unwrap();
        for id in [&a_id, &b_id] {
            let order = saga_order::get_order(&orders, id).await.unwrap().unwrap();
            assert_eq!(order.status, saga_order::domain::OrderStatus::Rejected, "{id}");
            assert_eq!(saga_inventory::reservation_status(&inventory, id).await.unwrap(), Some(saga_inventory::ReservationStatus::Released), "{id}");
        }
        assert_eq!(saga_inventory::stock_of(&inventory, "WIDGET-1").await.unwrap(), stock_before, "stock conserved");
    });
    sandbox.stop(services);
}
