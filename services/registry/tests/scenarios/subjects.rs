//! Registering, reading, looking up and deleting schemas; malformed requests.

use reqwest::header::CONTENT_TYPE;
use saga_sandbox::TestDb;
use serde_json::{json, Value};

use crate::support::*;

pub async fn registers_and_serves_schemas(db: TestDb) {
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
    assert_eq!(app.get(&format!("/schemas/ids/{id}/subjects")).await.ok(), json!(["audit-value", "orders-value", "team/orders"]));
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

pub async fn looks_up_schemas_under_a_subject(db: TestDb) {
    let app = spawn_app(db).await;
    let id = app.register("orders-value", &order_v1()).await;
    app.register("orders-value", &order_with_qty_default()).await;

    let found = app.post("/subjects/orders-value?deleted=false", &json!({ "schema": order_v1() })).await.ok();
    assert_eq!(found, json!({ "subject": "orders-value", "id": id, "version": 1, "schema": order_v1() }));

    let unknown = json!({ "schema": order_with_qty() });
    app.post("/subjects/orders-value", &unknown).await.assert_error(404, 40403);
    app.post("/subjects/nope", &json!({ "schema": order_v1() })).await.assert_error(404, 40401);
    app.post("/subjects/orders-value", &json!({ "schema": "{\"type\":\"record\"}" })).await.assert_error(422, 42201);
}

pub async fn rejects_malformed_requests(db: TestDb) {
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

    let raw =
        |content_type: &str, body: &str| app.http.post(format!("{}/subjects/s/versions", app.url)).header(CONTENT_TYPE, content_type).body(body.to_string());
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

pub async fn deletes_softly_then_permanently(db: TestDb) {
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
