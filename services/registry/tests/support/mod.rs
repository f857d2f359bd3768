//! Spawning the real registry and talking to it over HTTP.

use std::net::SocketAddr;

use reqwest::header::CONTENT_TYPE;
use saga_registry::Registry;
use saga_sandbox::TestDb;
use saga_store::Db;
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// What Confluent clients put on request bodies and what the registry answers with.
pub const SR_JSON: &str = "application/vnd.schemaregistry.v1+json";

/// A registry serving on a free port of 127.0.0.1, stopped when dropped.
pub struct TestApp {
    pub url: String,
    pub http: reqwest::Client,
    /// The pool the registry uses; closing it simulates a database outage.
    pub db: Db,
    // Keeps the SQLite file alive, or names the PostgreSQL database, for the test's duration.
    pub test_db: TestDb,
    _stop: oneshot::Sender<()>,
}

/// A server's answer: status, `content-type`, and the body as JSON (a string when it is not JSON).
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
}

impl Reply {
    /// Asserts a Confluent error body with these codes; returns the message.
    #[track_caller]
    pub fn assert_error(&self, status: u16, error_code: i64) -> String {
        assert_eq!((self.status, self.body["error_code"].as_i64()), (status, Some(error_code)), "unexpected reply {}", self.body);
        assert_eq!(self.content_type, SR_JSON, "error bodies are registry JSON");
        self.body["message"].as_str().expect("error has a message").to_string()
    }

    /// Asserts a 200 and returns the body.
    #[track_caller]
    pub fn ok(self) -> Value {
        assert_eq!(self.status, 200, "unexpected reply {}", self.body);
        self.body
    }
}

/// Starts the registry on `test_db`'s database.
pub async fn spawn_app(test_db: TestDb) -> TestApp {
    let (url, stop) = spawn_registry(test_db.db.clone()).await;
    TestApp { url, http: reqwest::Client::new(), db: test_db.db.clone(), test_db, _stop: stop }
}

/// Starts one more registry instance on `db`; it stops when the returned sender drops.
pub async fn spawn_registry(db: Db) -> (String, oneshot::Sender<()>) {
    let registry = Registry::build_with_db(db, SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("build registry");
    let url = registry.url();
    assert_ne!(registry.local_addr().port(), 0, "port 0 resolves to a real port");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(registry.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    (url, stop)
}

impl TestApp {
    pub async fn get(&self, path: &str) -> Reply {
        send(self.http.get(format!("{}{path}", self.url))).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        send(self.http.delete(format!("{}{path}", self.url))).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        post_to(&self.http, &self.url, path, body).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        let request = self.http.put(format!("{}{path}", self.url)).header(CONTENT_TYPE, SR_JSON);
        send(request.body(body.to_string())).await
    }

    /// Registers `schema` under `subject` (the subject as it goes in the path) and returns its id.
    pub async fn register(&self, subject: &str, schema: &str) -> i64 {
        register_at(&self.http, &self.url, subject, schema).await
    }

    /// Registers and returns the raw reply, for refusals.
    pub async fn try_register(&self, subject: &str, schema: &str) -> Reply {
        self.post(&format!("/subjects/{subject}/versions"), &json!({ "schema": schema })).await
    }
}

/// Registers `schema` under `subject` on the registry at `url` and returns its id.
pub async fn register_at(http: &reqwest::Client, url: &str, subject: &str, schema: &str) -> i64 {
    let reply = post_to(http, url, &format!("/subjects/{subject}/versions"), &json!({ "schema": schema })).await;
    let body = reply.ok();
    body["id"].as_i64().unwrap_or_else(|| panic!("register answers an id: {body}"))
}

async fn post_to(http: &reqwest::Client, url: &str, path: &str, body: &Value) -> Reply {
    send(http.post(format!("{url}{path}")).header(CONTENT_TYPE, SR_JSON).body(body.to_string())).await
}

pub async fn send(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.expect("registry answers");
    let status = response.status().as_u16();
    let content_type = response.headers().get(CONTENT_TYPE).map(|v| v.to_str().unwrap_or_default().to_string()).unwrap_or_default();
    let text = response.text().await.expect("read body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply { status, content_type, body }
}

/// An `Order` record schema with these fields, as JSON text.
pub fn order(fields: Value) -> String {
    json!({ "type": "record", "name": "Order", "namespace": "saga", "fields": fields }).to_string()
}

/// `Order { id: string }`.
pub fn order_v1() -> String {
    order(json!([{ "name": "id", "type": "string" }]))
}

/// v1 plus `qty: int = 1`: backward and forward compatible with v1.
pub fn order_with_qty_default() -> String {
    order(json!([{ "name": "id", "type": "string" }, { "name": "qty", "type": "int", "default": 1 }]))
}

/// v1 plus `qty: int` without default: not backward compatible with v1.
pub fn order_with_qty() -> String {
    order(json!([{ "name": "id", "type": "string" }, { "name": "qty", "type": "int" }]))
}
