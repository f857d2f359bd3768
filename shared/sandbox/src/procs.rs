//! Running the workspace's binaries as OS processes, for tests that need real process
//! boundaries: separate instances, SIGTERM, kill -9.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A broker for process tests: librdkafka's mock cluster listening on a real TCP port, with the
/// system's topics and their dead-letter topics under one prefix.
pub struct TestBroker {
    /// The cluster; the broker lives as long as this.
    pub cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    /// Its bootstrap address.
    pub bootstrap: String,
    /// The topic names.
    pub topics: saga_contracts::Topics,
}

/// A [`TestBroker`] with topics `prefix.*`, `partitions` each.
pub fn mock_broker(prefix: &str, partitions: i32) -> TestBroker {
    let topics = saga_contracts::Topics::new(prefix);
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    for t in topics.all_with_dlts() {
        cluster.create_topic(&t, partitions, 1).unwrap();
    }
    TestBroker { bootstrap: cluster.bootstrap_servers(), cluster, topics }
}

/// A port nothing listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Path of a workspace binary next to the running test.
pub fn binary(name: &str) -> PathBuf {
    // Integration tests run from target/<profile>/deps; the workspace's binaries are one level up.
    let dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: build the workspace's binaries first (`cargo build --workspace --bins`)", path.display());
    path
}

/// A child process and the name its log file is under.
pub struct Proc {
    /// Log file name (without `.log`).
    pub name: &'static str,
    /// The process.
    pub child: Child,
}

impl Drop for Proc {
    /// A test that fails half-way must not leave its services running: whatever was not stopped
    /// with [`terminate`] is killed.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `name` with only `env` (and `RUST_LOG=info`), stderr to `<log_dir>/<name>.log`.
pub fn spawn(name: &'static str, env: &[(&str, String)], log_dir: &Path) -> Proc {
    let log = std::fs::File::create(log_dir.join(format!("{name}.log"))).unwrap();
    let mut cmd = Command::new(binary(name));
    cmd.env_clear().env("RUST_LOG", "info").stdout(Stdio::null()).stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc { name, child: cmd.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}")) }
}

/// The schema registry on `port`, with its SQLite file (and log) in `dir`.
pub fn spawn_registry(port: u16, dir: &Path) -> Proc {
    let db = format!("sqlite://{}", dir.join("registry.db").display());
    spawn("saga-registry", &[("SAGA_REGISTRY_BIND", format!("127.0.0.1:{port}")), ("SAGA_REGISTRY_DATABASE_URL", db)], dir)
}

/// Sends SIGTERM and checks the process exits 0 within 30 s.
pub fn terminate(mut p: Proc, log_dir: &Path) {
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
pub fn http_get(port: u16, path: &str) -> String {
    try_http_get(port, path).unwrap_or_else(|e| panic!("GET {path} on port {port}: {e}"))
}

/// [`http_get`], with an error while nothing listens yet.
pub fn try_http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    Ok(response)
}

/// A POST of a JSON `body` on 127.0.0.1 with `headers`; the whole response (status line, headers,
/// body).
pub fn http_post(port: u16, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("POST {path} on port {port}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// The binary of a service.
pub fn service_binary(service: &str) -> &'static str {
    match service {
        "order" => "saga-order",
        "inventory" => "saga-inventory",
        "payment" => "saga-payment",
        "orchestrator" => "saga-orchestrator",
        other => panic!("no service {other}"),
    }
}

/// Loads the development seed (stock, accounts) into the databases the services will open;
/// migrations are idempotent, so the services migrate them again harmlessly.
pub async fn seed(inventory_url: &str, payment_url: &str) {
    let seed = crate::seed::Seed::dev();
    let inventory = saga_runtime::service::open_database(inventory_url, 1, &saga_inventory::MIGRATIONS).await.unwrap();
    seed.apply_stock(&inventory).await.unwrap();
    let payment = saga_runtime::service::open_database(payment_url, 1, &saga_payment::MIGRATIONS).await.unwrap();
    seed.apply_accounts(&payment).await.unwrap();
}

/// One database per service (order, inventory, payment, orchestrator, in that order) on the
/// PostgreSQL test server, with the development seed in inventory and payment. Drop them with
/// [`crate::db::drop_postgres_databases`].
///
/// # Panics
/// When the test server cannot be reached, with how to start it.
pub async fn service_databases() -> Vec<String> {
    let mut urls = Vec::new();
    for _ in 0..4 {
        urls.push(crate::db::create_postgres_database().await.unwrap_or_else(|e| panic!("{e}")));
    }
    seed(&urls[1], &urls[2]).await;
    urls
}

/// Places orders as any application would: Confluent wire format through the registry, keyed
/// by order id, on the order command topic.
pub struct OrderClient {
    codec: saga_runtime::codec::Codec,
    producer: rdkafka::producer::FutureProducer,
    topic: String,
}

impl OrderClient {
    /// Waits up to 20 s for the registry (its process may still be starting), then connects.
    pub async fn connect(registry_url: &str, bootstrap: &str, topics: &saga_contracts::Topics) -> OrderClient {
        let codec = saga_runtime::codec::Codec::new(registry_url).unwrap();
        let mut registered = false;
        for _ in 0..100 {
            if codec.register(&[saga_contracts::PlaceOrder::FULL_NAME]).await.is_ok() {
                registered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(registered, "the registry never answered at {registry_url}");
        let mut kafka = saga_runtime::ServiceSettings::defaults_for("test").kafka;
        kafka.bootstrap_servers = bootstrap.to_string();
        let producer = saga_runtime::kafka::producer(&kafka, "test-client").unwrap();
        OrderClient { codec, producer, topic: topics.name(saga_contracts::TopicKind::OrderCommands) }
    }

    /// Publishes `order`, with a W3C `traceparent` header when given.
    pub async fn place(&self, order: saga_contracts::PlaceOrder, traceparent: Option<&str>) {
        let message: saga_contracts::Message = order.into();
        let payload = self.codec.encode(&message).await.unwrap();
        let mut headers = rdkafka::message::OwnedHeaders::new();
        if let Some(tp) = traceparent {
            headers = headers.insert(rdkafka::message::Header { key: "traceparent", value: Some(tp.as_bytes()) });
        }
        let record = rdkafka::producer::FutureRecord::to(&self.topic).key(message.order_id()).payload(&payload).headers(headers);
        self.producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }
}

/// What a process test stands on: a temporary directory (the SQLite files and the logs), the mock
/// broker with the system's topics under one prefix, the participants' databases seeded, and the
/// registry as a process. Services start from [`Sandbox::env`], which a test extends.
pub struct Sandbox {
    // Fields drop in order: the registry is killed before its directory goes.
    registry: Option<Proc>,
    /// SQLite files and logs.
    pub dir: tempfile::TempDir,
    /// The broker and the topic names.
    pub broker: TestBroker,
    /// The registry's URL.
    pub registry_url: String,
    prefix: String,
}

impl Sandbox {
    /// Starts the broker (topics `prefix.*`, `partitions` each) and the registry, and seeds the
    /// inventory and payment databases.
    pub fn start(prefix: &str, partitions: i32, rt: &tokio::runtime::Runtime) -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let broker = mock_broker(prefix, partitions);
        let port = free_port().expect("a free port");
        let registry = spawn_registry(port, dir.path());
        let sandbox = Sandbox { dir, broker, registry_url: format!("http://127.0.0.1:{port}"), registry: Some(registry), prefix: prefix.to_string() };
        rt.block_on(seed(&sandbox.db("inventory"), &sandbox.db("payment")));
        sandbox
    }

    /// The SQLite URL of `service`'s database.
    pub fn db(&self, service: &str) -> String {
        format!("sqlite://{}", self.dir.path().join(format!("{service}.db")).display())
    }

    /// The environment of `service`: the broker, the registry, its database, the topics, a 2 ms
    /// fetch wait (the mock cluster answers a fetch only at its deadline) and no HTTP.
    pub fn env(&self, service: &str) -> Vec<(&'static str, String)> {
        vec![
            ("SAGA_KAFKA__BOOTSTRAP_SERVERS", self.broker.bootstrap.clone()),
            ("SAGA_REGISTRY__URL", self.registry_url.clone()),
            ("SAGA_DATABASE__URL", self.db(service)),
            ("SAGA_TOPICS__PREFIX", self.prefix.clone()),
            ("SAGA_KAFKA__FETCH_WAIT_MAX_MS", "2".into()),
            ("SAGA_HTTP__BIND", String::new()),
        ]
    }

    /// Starts `service` ("order", …) with [`Sandbox::env`] and then `extra` (a key given again wins).
    pub fn spawn(&self, service: &str, extra: &[(&'static str, String)]) -> Proc {
        let mut env = self.env(service);
        env.extend_from_slice(extra);
        spawn(service_binary(service), &env, self.dir.path())
    }

    /// A client that places orders through the registry and the broker.
    pub async fn client(&self) -> OrderClient {
        OrderClient::connect(&self.registry_url, &self.broker.bootstrap, &self.broker.topics).await
    }

    /// Stops the registry with SIGTERM (a test of what the services do without it), checking it
    /// exits 0.
    pub fn stop_registry(&mut self) {
        if let Some(registry) = self.registry.take() {
            terminate(registry, self.dir.path());
        }
    }

    /// Stops each of `procs` and then the registry with SIGTERM, checking that each exits 0. The
    /// broker and the directory stay until the sandbox is dropped, so the databases can be read.
    pub fn stop(&mut self, procs: impl IntoIterator<Item = Proc>) {
        for p in procs.into_iter().chain(self.registry.take()) {
            terminate(p, self.dir.path());
        }
    }
}

/// The status of saga `id` in the orchestrator's database `db`, if it exists.
pub async fn saga_status(db: &saga_store::Db, id: &str) -> Option<saga_orchestrator::saga::Status> {
    saga_orchestrator::store::get_saga(db, id).await.unwrap().map(|s| s.state.status)
}

/// Waits until saga `id` has one of the statuses `want`, polling every 50 ms; returns which, and
/// when it was first seen so. Fails the test after `within`.
pub async fn await_saga(
    db: &saga_store::Db,
    id: &str,
    want: &[saga_orchestrator::saga::Status],
    within: Duration,
) -> (saga_orchestrator::saga::Status, std::time::Instant) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let now = std::time::Instant::now();
        match saga_status(db, id).await {
            Some(status) if want.contains(&status) => return (status, now),
            status => assert!(now < deadline, "saga {id} was not one of {want:?} within {within:?} (it is {status:?})"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
