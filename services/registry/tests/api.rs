//! Black-box tests: the real registry on 127.0.0.1:0, driven over HTTP, on SQLite and PostgreSQL.

mod support;

use reqwest::header::CONTENT_TYPE;
use saga_store::testing::TestDb;
use saga_store::Db;
use serde_json::{json, Value};
use support::*;

saga_store::backend_tests!(
    registers_and_serves_schemas,
    looks_up_schemas_under_a_subject,
    rejects_malformed_requests,
    enforces_compatibility_on_register,
    checks_compatibility_without_registering,
    manages_compatibility_config,
    deletes_softly_then_permanently,
    storage_failures_are_500,
    instances_sharing_a_database_agree_on_ids,
    schema_registry_converter_round_trips,
);

async fn registers_and_serves_schemas(db: TestDb) {
    let app = spawn_app(db).await;
    let id = app.register("orders-value", &order_v1()).await;
    assert!(id > 0);

    // Idempotent, whatever the formatting; ids are global across subjects.
    let pretty = serde_json::to_string_pretty(&serde_json::from_str::<Value>(&order_v1()).unwrap()).unwrap();
    assert_eq!(app.register("orders-value", &pretty).await, id);
    assert_eq!(app.register("audit-value", &order_v1()).await, id);
    let id2 = app.register("orders-value", &order_with_qty_default()).await;
    assert_ne!(id2, id);
    // A slash in a subject travels as %2F.
    assert_eq!(app.register("team%2Forders", &order_v1()).await, id);

    let reply = app.get(&format!("/schemas/ids/{id}?fetchMaxId=false&subject=orders-value")).await;
    assert_eq!(reply.content_type, SR_JSON);
    assert_eq!(reply.ok(), json!({ "schema": order_v1() }));
    assert_eq!(
        app.get(&format!("/schemas/ids/{id}/versions")).await.ok(),
        json!([
            { "subject": "audit-value", "version": 1 },
            { "subject": "orders-value", "version": 1 },
            { "subject": "team/orders", "version": 1 },
        ])
    );
    assert_eq!(
        app.get(&format!("/schemas/ids/{id}/subjects")).await.ok(),
        json!(["audit-value", "orders-value", "team/orders"])
    );
    assert_eq!(app.get("/schemas/types").await.ok(), json!(["AVRO"]));
    assert_eq!(app.get("/subjects").await.ok(), json!(["audit-value", "orders-value", "team/orders"]));
    assert_eq!(app.get("/subjects/orders-value/versions").await.ok(), json!([1, 2]));

    let first = json!({ "subject": "orders-value", "version": 1, "id": id, "schema": order_v1() });
    assert_eq!(app.get("/subjects/orders-value/versions/1").await.ok(), first);
    let latest = json!({ "subject": "orders-value", "version": 2, "id": id2, "schema": order_with_qty_default() });
    assert_eq!(app.get("/subjects/orders-value/versions/latest").await.ok(), latest);
    assert_eq!(app.get("/subjects/orders-value/versions/-1").await.ok(), latest);
    let raw = app.get("/subjects/orders-value/versions/2/schema").await;
    assert_eq!(raw.content_type, SR_JSON);
    assert_eq!(raw.ok(), serde_json::from_str::<Value>(&order_with_qty_default()).unwrap());

    app.get("/subjects/nope/versions").await.assert_error(404, 40401);
    app.get("/subjects/nope/versions/1").await.assert_error(404, 40401);
    app.get("/subjects/orders-value/versions/9").await.assert_error(404, 40402);
    for bad in ["abc", "0", "-2", "2147483648"] {
        app.get(&format!("/subjects/orders-value/versions/{bad}")).await.assert_error(422, 42202);
    }
    app.get("/schemas/ids/999").await.assert_error(404, 40403);
    app.get("/schemas/ids/abc").await.assert_error(404, 40403);
    app.get("/schemas/ids/999/versions").await.assert_error(404, 40403);

    assert_eq!(app.get("/").await.ok(), json!({}));
    assert_eq!(app.get("/healthz").await.ok(), json!("ok"));
}

async fn looks_up_schemas_under_a_subject(db: TestDb) {
    let app = spawn_app(db).await;
    let id = app.register("orders-value", &order_v1()).await;
    app.register("orders-value", &order_with_qty_default()).await;

    let found = app.post("/subjects/orders-value?deleted=false", &json!({ "schema": order_v1() })).await.ok();
    assert_eq!(found, json!({ "subject": "orders-value", "id": id, "version": 1, "schema": order_v1() }));

    let unknown = json!({ "schema": order_with_qty() });
    app.post("/subjects/orders-value", &unknown).await.assert_error(404, 40403);
    app.post("/subjects/nope", &json!({ "schema": order_v1() })).await.assert_error(404, 40401);
    app.post("/subjects/orders-value", &json!({ "schema": "{\"type\":\"record\"}" }))
        .await
        .assert_error(422, 42201);
}

async fn rejects_malformed_requests(db: TestDb) {
    let app = spawn_app(db).await;
    let message = app.try_register("s", "{\"type\":\"record\",\"fields\":[]}").await.assert_error(422, 42201);
    assert!(message.starts_with("Invalid schema"), "{message}");
    app.try_register("s", "not json").await.assert_error(422, 42201);
    let protobuf = json!({ "schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF" });
    let message = app.post("/subjects/s/versions", &protobuf).await.assert_error(422, 42201);
    assert!(message.contains("only supports AVRO"), "{message}");
    let with_refs = json!({ "schema": order_v1(), "references": [{ "name": "x", "subject": "y", "version": 1 }] });
    app.post("/subjects/s/versions", &with_refs).await.assert_error(422, 42201);
    app.post("/subjects/s/versions", &json!({})).await.assert_error(422, 42201);
    app.post("/subjects/s/versions", &json!({ "schema": 5 })).await.assert_error(422, 422);

    let raw = |content_type: &str, body: &str| {
        app.http
            .post(format!("{}/subjects/s/versions", app.url))
            .header(CONTENT_TYPE, content_type)
            .body(body.to_string())
    };
    send(raw(SR_JSON, "{")).await.assert_error(400, 400);
    let body = json!({ "schema": order_v1() }).to_string();
    send(raw("text/plain", &body)).await.assert_error(415, 415);
    assert_eq!(app.get("/subjects").await.ok(), json!([]), "refusals register nothing");
    for accepted in ["application/json", "application/octet-stream", "application/json; charset=utf-8"] {
        let reply = send(raw(accepted, &body)).await;
        assert_eq!(reply.status, 200, "{accepted}: {}", reply.body);
    }
    assert_eq!(app.get("/subjects/s/versions").await.ok(), json!([1]));

    app.get("/no/such/route").await.assert_error(404, 404);
    send(app.http.patch(format!("{}/subjects", app.url))).await.assert_error(405, 405);
}

async fn enforces_compatibility_on_register(db: TestDb) {
    let app = spawn_app(db).await;
    // Default BACKWARD: a new field needs a default.
    app.register("orders-value", &order_v1()).await;
    let message = app.try_register("orders-value", &order_with_qty()).await.assert_error(409, 409);
    assert!(message.contains("qty"), "names the field: {message}");
    let id = app.register("orders-value", &order_with_qty_default()).await;
    assert_eq!(app.get("/subjects/orders-value/versions").await.ok(), json!([1, 2]), "refusal made no version");

    // FORWARD: the latest version must read the new one; it cannot without `id`.
    app.put("/config/orders-value", &json!({ "compatibility": "FORWARD" })).await.ok();
    let v3 = order(json!([
        { "name": "id", "type": "string" },
        { "name": "qty", "type": "int", "default": 1 },
        { "name": "note", "type": "string" },
    ]));
    assert_ne!(app.register("orders-value", &v3).await, id, "a field without default is forward compatible");
    let without_id = order(json!([{ "name": "qty", "type": "int", "default": 1 }, { "name": "note", "type": "string" }]));
    let message = app.try_register("orders-value", &without_id).await.assert_error(409, 409);
    assert!(message.contains("forward"), "{message}");

    // NONE: anything goes.
    app.put("/config/orders-value", &json!({ "compatibility": "NONE" })).await.ok();
    app.register("orders-value", &order(json!([{ "name": "id", "type": "boolean" }]))).await;

    // v1 {a:int} -> v2 {} -> v3 {a:string=""}: fine against the latest, not against v1.
    let history = [order(json!([{ "name": "a", "type": "int" }])), order(json!([]))];
    let v3 = order(json!([{ "name": "a", "type": "string", "default": "" }]));
    for (subject, level) in [("plain", "BACKWARD"), ("transitive", "BACKWARD_TRANSITIVE")] {
        app.put(&format!("/config/{subject}"), &json!({ "compatibility": level })).await.ok();
        for schema in &history {
            app.register(subject, schema).await;
        }
    }
    app.register("plain", &v3).await;
    let message = app.try_register("transitive", &v3).await.assert_error(409, 409);
    assert!(message.contains("version 1"), "{message}");
}

async fn checks_compatibility_without_registering(db: TestDb) {
    let app = &spawn_app(db).await;
    let check = |path: &str, schema: String| {
        let path = format!("/compatibility/subjects/{path}");
        async move { app.post(&path, &json!({ "schema": schema })).await }
    };
    check("orders-value/versions/latest", order_v1()).await.assert_error(404, 40401);
    app.register("orders-value", &order_v1()).await;

    assert_eq!(check("orders-value/versions/latest", order_with_qty()).await.ok(), json!({ "is_compatible": false }));
    let verbose = check("orders-value/versions/latest?verbose=true", order_with_qty()).await.ok();
    assert_eq!(verbose["is_compatible"], json!(false));
    let messages = verbose["messages"].as_array().expect("verbose lists messages");
    assert!(messages.iter().any(|m| m.as_str().unwrap().contains("qty")), "{verbose}");
    let fine = json!({ "is_compatible": true });
    assert_eq!(check("orders-value/versions/latest", order_with_qty_default()).await.ok(), fine);
    assert_eq!(check("orders-value/versions/1", order_with_qty_default()).await.ok(), fine);
    assert_eq!(check("orders-value/versions", order_with_qty_default()).await.ok(), fine);
    assert_eq!(
        check("orders-value/versions/1?verbose=true", order_with_qty_default()).await.ok(),
        json!({ "is_compatible": true, "messages": [] })
    );
    check("orders-value/versions/7", order_v1()).await.assert_error(404, 40402);
    check("orders-value/versions/abc", order_v1()).await.assert_error(422, 42202);
    check("orders-value/versions/latest", "{".to_string()).await.assert_error(422, 42201);

    // The subject's own level decides.
    app.put("/config/orders-value", &json!({ "compatibility": "NONE" })).await.ok();
    assert_eq!(check("orders-value/versions/latest", order_with_qty()).await.ok(), fine);
    assert_eq!(app.get("/subjects/orders-value/versions").await.ok(), json!([1]), "checks register nothing");
}

async fn manages_compatibility_config(db: TestDb) {
    let app = spawn_app(db).await;
    assert_eq!(app.get("/config").await.ok(), json!({ "compatibilityLevel": "BACKWARD" }));
    assert_eq!(app.put("/config", &json!({ "compatibility": "FULL" })).await.ok(), json!({ "compatibility": "FULL" }));
    assert_eq!(app.get("/config").await.ok(), json!({ "compatibilityLevel": "FULL" }));

    let message = app.get("/config/orders-value").await.assert_error(404, 40408);
    assert_eq!(message, "Subject 'orders-value' does not have subject-level compatibility configured");
    assert_eq!(
        app.get("/config/orders-value?defaultToGlobal=true").await.ok(),
        json!({ "compatibilityLevel": "FULL" })
    );

    // Global FULL applies to a subject without its own level.
    app.register("orders-value", &order_v1()).await;
    app.try_register("orders-value", &order_with_qty()).await.assert_error(409, 409);

    let set = app.put("/config/orders-value", &json!({ "compatibility": "none" })).await.ok();
    assert_eq!(set, json!({ "compatibility": "NONE" }));
    assert_eq!(app.get("/config/orders-value").await.ok(), json!({ "compatibilityLevel": "NONE" }));
    app.register("orders-value", &order_with_qty()).await;

    app.put("/config", &json!({ "compatibility": "SIDEWAYS" })).await.assert_error(422, 42203);
    app.put("/config/orders-value", &json!({})).await.assert_error(422, 42203);
    assert_eq!(app.get("/config").await.ok(), json!({ "compatibilityLevel": "FULL" }), "refusal changed nothing");

    assert_eq!(app.delete("/config/orders-value").await.ok(), json!({ "compatibilityLevel": "NONE" }));
    app.get("/config/orders-value").await.assert_error(404, 40408);
    app.delete("/config/orders-value").await.assert_error(404, 40408);
}

async fn deletes_softly_then_permanently(db: TestDb) {
    let app = spawn_app(db).await;
    let id = app.register("s", &order_v1()).await;
    app.register("s", &order_with_qty_default()).await;

    assert_eq!(app.delete("/subjects/s/versions/1").await.ok(), json!(1));
    assert_eq!(app.get("/subjects/s/versions").await.ok(), json!([2]));
    app.get("/subjects/s/versions/1").await.assert_error(404, 40402);
    assert_eq!(app.get("/subjects/s/versions/1?deleted=true").await.ok()["id"], json!(id));
    assert_eq!(app.get("/subjects/s/versions?deleted=true").await.ok(), json!([1, 2]));
    app.delete("/subjects/s/versions/1").await.assert_error(404, 40402);
    app.delete("/subjects/s/versions/x").await.assert_error(422, 42202);
    app.delete("/subjects/s/versions/latest?permanent=true").await.assert_error(404, 40407);
    app.delete("/subjects/s?permanent=true").await.assert_error(404, 40405);

    assert_eq!(app.delete("/subjects/s").await.ok(), json!([2]));
    assert_eq!(app.get("/subjects").await.ok(), json!([]));
    assert_eq!(app.get("/subjects?deleted=true").await.ok(), json!(["s"]));
    app.get("/subjects/s/versions").await.assert_error(404, 40401);
    app.get("/subjects/s/versions/latest").await.assert_error(404, 40401);
    app.delete("/subjects/s").await.assert_error(404, 40404);
    app.post("/subjects/s", &json!({ "schema": order_v1() })).await.assert_error(404, 40401);
    let found = app.post("/subjects/s?deleted=true", &json!({ "schema": order_v1() })).await.ok();
    assert_eq!((found["id"].clone(), found["version"].clone()), (json!(id), json!(1)));
    // Old messages stay decodable.
    assert_eq!(app.get(&format!("/schemas/ids/{id}")).await.ok()["schema"], json!(order_v1()));
    assert_eq!(app.get(&format!("/schemas/ids/{id}/versions")).await.ok(), json!([]));

    // Registering again makes a new version with the same id; versions are never reused.
    assert_eq!(app.register("s", &order_v1()).await, id);
    assert_eq!(app.get("/subjects/s/versions/latest").await.ok()["version"], json!(3));

    assert_eq!(app.delete("/subjects/s/versions/1?permanent=true").await.ok(), json!(1));
    assert_eq!(app.get("/subjects/s/versions?deleted=true").await.ok(), json!([2, 3]));
    app.delete("/subjects/s/versions/1?permanent=true").await.assert_error(404, 40402);
    app.delete("/subjects/nope").await.assert_error(404, 40401);
}

async fn storage_failures_are_500(db: TestDb) {
    let app = spawn_app(db).await;
    let id = app.register("s", &order_v1()).await;
    app.db.close().await;

    app.get("/subjects/s/versions/latest").await.assert_error(500, 50001);
    app.get(&format!("/schemas/ids/{id}")).await.assert_error(500, 50001);
    app.get("/subjects").await.assert_error(500, 50001);
    app.get("/config").await.assert_error(500, 50001);
    app.try_register("s", &order_with_qty_default()).await.assert_error(500, 50001);
    app.get("/healthz").await.assert_error(500, 50001);
}

async fn instances_sharing_a_database_agree_on_ids(db: TestDb) {
    let app = spawn_app(db).await;
    let other_db = Db::connect(&app.test_db.url, 4).await.expect("second pool on the same database");
    let (other_url, _stop_other) = spawn_registry(other_db).await;
    app.put("/config", &json!({ "compatibility": "NONE" })).await.ok();

    // Every schema goes to both subjects through both instances at once.
    const SCHEMAS: usize = 12;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..SCHEMAS {
        let schema = order(json!([{ "name": format!("f{i}"), "type": "string" }]));
        for (n, subject) in ["race-a", "race-b"].into_iter().enumerate() {
            let url = if (i + n) % 2 == 0 { app.url.clone() } else { other_url.clone() };
            let (http, schema) = (app.http.clone(), schema.clone());
            tasks.spawn(async move { (i, subject, register_at(&http, &url, subject, &schema).await) });
        }
    }
    let mut ids = vec![[0_i64; 2]; SCHEMAS];
    while let Some(joined) = tasks.join_next().await {
        let (i, subject, id) = joined.expect("registration task");
        ids[i][usize::from(subject == "race-b")] = id;
    }
    for (i, pair) in ids.iter().enumerate() {
        assert_eq!(pair[0], pair[1], "schema {i} has one id under both subjects");
    }
    let mut distinct: Vec<i64> = ids.iter().map(|pair| pair[0]).collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), SCHEMAS, "no id was handed out twice: {ids:?}");

    let expected: Vec<usize> = (1..=SCHEMAS).collect();
    for subject in ["race-a", "race-b"] {
        assert_eq!(app.get(&format!("/subjects/{subject}/versions")).await.ok(), json!(expected));
        for (i, pair) in ids.iter().enumerate() {
            let schema = order(json!([{ "name": format!("f{i}"), "type": "string" }]));
            let found = app.post(&format!("/subjects/{subject}"), &json!({ "schema": schema })).await.ok();
            assert_eq!(found["id"], json!(pair[0]));
        }
    }
    let from_other = send(app.http.get(format!("{other_url}/schemas/ids/{}", ids[3][0]))).await.ok();
    assert_eq!(from_other["schema"], json!(order(json!([{ "name": "f3", "type": "string" }]))));
}

async fn schema_registry_converter_round_trips(db: TestDb) {
    use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
    use schema_registry_converter::async_impl::schema_registry::SrSettings;
    use schema_registry_converter::schema_registry_common::{SchemaType, SubjectNameStrategy, SuppliedSchema};

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Order {
        id: String,
        qty: i32,
    }

    let app = spawn_app(db).await;
    let schema = order(json!([{ "name": "id", "type": "string" }, { "name": "qty", "type": "int" }]));
    let supplied = SuppliedSchema::new(Some("saga.Order".to_string()), SchemaType::Avro, schema.clone());
    let strategy = SubjectNameStrategy::RecordNameStrategyWithSchema(supplied);
    let sent = Order { id: "o-1".to_string(), qty: 3 };

    let encoder = AvroEncoder::new(SrSettings::new(app.url.clone()));
    let bytes = encoder.encode_struct(&sent, &strategy).await.expect("encode through the registry");

    let registered = app.get("/subjects/saga.Order/versions/latest").await.ok();
    let id = registered["id"].as_i64().expect("the encoder registered the schema");
    assert_eq!(registered["schema"], json!(schema));
    assert_eq!(bytes[0], 0, "Confluent magic byte");
    assert_eq!(i64::from(u32::from_be_bytes(bytes[1..5].try_into().unwrap())), id, "schema id follows it");

    // A fresh decoder has no cache: it must fetch the schema by id from the registry.
    let decoder = AvroDecoder::new(SrSettings::new(app.url.clone()));
    let decoded = decoder.decode(Some(&bytes)).await.expect("decode through the registry");
    let received: Order = apache_avro::from_value(&decoded.value).expect("decoded value is an Order");
    assert_eq!(received, sent);
}

#[test]
fn a_bad_argument_is_named() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_saga-registry"))
        .args(["--bind", "not-an-address"])
        .output()
        .expect("run saga-registry");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--bind"), "the error names the argument: {stderr}");
}

#[test]
fn the_binary_serves_until_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_saga-registry"))
        .env("SAGA_REGISTRY_BIND", "127.0.0.1:0")
        .env("SAGA_REGISTRY_DATABASE_URL", format!("sqlite://{}", dir.path().join("r.db").display()))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start saga-registry");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("read startup line");
    let url = line.trim().rsplit(' ').next().expect("startup line ends with the url").to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let health = runtime.block_on(async { reqwest::get(format!("{url}/healthz")).await?.text().await });
    assert_eq!(health.expect("healthz answers"), "ok");

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("run kill");
    assert!(killed.success());
    let status = child.wait().expect("wait for saga-registry");
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}
