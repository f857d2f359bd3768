//! The services as separate OS processes: the five binaries, configured only by environment
//! variables, against a broker hosted by this test (librdkafka's mock cluster listens on a real
//! TCP port) and SQLite files. Orders go in through the broker like any client's; every saga
//! must finish, and every process must stop cleanly on SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use saga_cli::sample::sample_order;
use saga_cli::seed::Seed;
use saga_contracts::{Message, PlaceOrder, TopicKind, Topics};
use saga_order::domain::OrderStatus;
use saga_runtime::codec::Codec;

fn binary(name: &str) -> PathBuf {
    // Integration tests run from target/<profile>/deps; the workspace's binaries are one level up.
    let dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: build the workspace's binaries first (`cargo build --workspace --bins`)", path.display());
    path
}

struct Proc {
    name: &'static str,
    child: Child,
}

fn spawn(name: &'static str, env: &[(&str, String)], log_dir: &Path) -> Proc {
    let log = std::fs::File::create(log_dir.join(format!("{name}.log"))).unwrap();
    let mut cmd = Command::new(binary(name));
    cmd.env_clear().env("RUST_LOG", "info").stdout(Stdio::null()).stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc { name, child: cmd.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}")) }
}

fn terminate(mut p: Proc, log_dir: &Path) {
    let _ = Command::new("kill").arg("-TERM").arg(p.child.id().to_string()).status();
    for _ in 0..300 {
        if let Some(status) = p.child.try_wait().unwrap() {
            let log = std::fs::read_to_string(log_dir.join(format!("{}.log", p.name))).unwrap_or_default();
            assert!(status.success(), "{} exited with {status} on SIGTERM; log:\n{log}", p.name);
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = p.child.kill();
    panic!("{} did not stop within 30 s of SIGTERM", p.name);
}

/// A plain HTTP/1.1 GET; returns the whole response.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to health port {port}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

#[test]
fn services_run_as_separate_processes() {
    let dir = tempfile::tempdir().unwrap();
    let topics = Topics::new("proc");
    let cluster = MockCluster::new(1).unwrap();
    for t in topics.all_with_dlts() {
        cluster.create_topic(&t, 4, 1).unwrap();
    }
    let bootstrap = cluster.bootstrap_servers();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let registry_url = format!("http://127.0.0.1:{port}");
    let db = |name: &str| format!("sqlite://{}", dir.path().join(format!("{name}.db")).display());

    let rt = tokio::runtime::Runtime::new().unwrap();
    // Seed stock and accounts into the databases the services will open (migrations are idempotent).
    rt.block_on(async {
        let seed = Seed::dev();
        let inventory = saga_runtime::service::open_database(&db("inventory"), 1, &saga_inventory::MIGRATIONS).await.unwrap();
        seed.apply_stock(&inventory).await.unwrap();
        let payment = saga_runtime::service::open_database(&db("payment"), 1, &saga_payment::MIGRATIONS).await.unwrap();
        seed.apply_accounts(&payment).await.unwrap();
    });

    let registry = spawn(
        "saga-registry",
        &[("SAGA_REGISTRY_BIND", format!("127.0.0.1:{port}")), ("SAGA_REGISTRY_DATABASE_URL", db("registry"))],
        dir.path(),
    );
    let mut services = Vec::new();
    let mut health_ports = Vec::new();
    for name in ["order", "inventory", "payment", "orchestrator"] {
        let health_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        health_ports.push(health_port);
        let bin: &'static str = match name {
            "order" => "saga-order",
            "inventory" => "saga-inventory",
            "payment" => "saga-payment",
            _ => "saga-orchestrator",
        };
        services.push(spawn(
            bin,
            &[
                ("SAGA_KAFKA__BOOTSTRAP_SERVERS", bootstrap.clone()),
                ("SAGA_REGISTRY__URL", registry_url.clone()),
                ("SAGA_DATABASE__URL", db(name)),
                ("SAGA_TOPICS__PREFIX", "proc".into()),
                // The mock cluster answers a fetch only at its deadline.
                ("SAGA_KAFKA__FETCH_WAIT_MAX_MS", "2".into()),
                ("SAGA_HTTP__BIND", format!("127.0.0.1:{health_port}")),
            ],
            dir.path(),
        ));
    }

    let n = 21;
    let statuses = rt.block_on(async {
        // The registry process may still be starting: the codec retries until it answers.
        let codec = Codec::new(&registry_url).unwrap();
        let mut registered = false;
        for _ in 0..100 {
            if codec.register(&[PlaceOrder::FULL_NAME]).await.is_ok() {
                registered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(registered, "the registry process never answered at {registry_url}");
        let mut kafka = saga_runtime::ServiceSettings::defaults_for("test").kafka;
        kafka.bootstrap_servers = bootstrap.clone();
        let producer = saga_runtime::kafka::producer(&kafka, "test").unwrap();
        let mut ids = Vec::new();
        for i in 0..n {
            let (order, _) = sample_order("proc", i);
            ids.push(order.order_id.clone());
            let message: Message = order.into();
            let payload = codec.encode(&message).await.unwrap();
            let topic = topics.name(TopicKind::OrderCommands);
            let record = rdkafka::producer::FutureRecord::to(&topic).key(message.order_id()).payload(&payload);
            producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
        }
        let orders = saga_store::Db::connect(&db("order"), 1).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let mut done = Vec::new();
            for id in &ids {
                if let Some(o) = saga_order::get_order(&orders, id).await.unwrap() {
                    if o.status != OrderStatus::Pending {
                        done.push((id.clone(), o.status));
                    }
                }
            }
            if done.len() == ids.len() {
                return done;
            }
            if tokio::time::Instant::now() > deadline {
                let logs: String = ["saga-order", "saga-orchestrator"]
                    .iter()
                    .map(|n| std::fs::read_to_string(dir.path().join(format!("{n}.log"))).unwrap_or_default())
                    .collect();
                panic!("{} of {n} orders finished; logs:\n{}", done.len(), &logs[logs.len().saturating_sub(4000)..]);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let approved = statuses.iter().filter(|(_, s)| *s == OrderStatus::Approved).count();
    assert_eq!(approved, 15, "5 in 7 sample orders are approved");
    assert_eq!(statuses.len() - approved, 6);

    // Every service reports itself alive, and ready once database, registry and broker answer.
    for port in &health_ports {
        assert!(http_get(*port, "/healthz").ends_with("ok"), "/healthz on {port}");
        let mut ready = String::new();
        for _ in 0..100 {
            ready = http_get(*port, "/readyz");
            if ready.starts_with("HTTP/1.1 200") {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(ready.starts_with("HTTP/1.1 200") && ready.contains(r#""ready":true"#), "/readyz on {port}: {ready}");
    }

    // With the registry gone, readiness says so (and liveness does not change).
    terminate(registry, dir.path());
    let mut not_ready = String::new();
    for _ in 0..100 {
        not_ready = http_get(health_ports[0], "/readyz");
        if not_ready.starts_with("HTTP/1.1 503") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(not_ready.starts_with("HTTP/1.1 503") && not_ready.contains(r#""registry":false"#), "/readyz without registry: {not_ready}");
    assert!(http_get(health_ports[0], "/healthz").ends_with("ok"));

    for s in services {
        terminate(s, dir.path());
    }
    drop(cluster);
}
