//! Compatibility levels: enforced on register, dry-run checks, and their configuration.

use saga_sandbox::TestDb;
use serde_json::json;

use crate::support::*;

pub async fn enforces_compatibility_on_register(db: TestDb) {
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

/// The project's own evolution of `PlaceOrder`: the released v1, then v2 (an optional
/// promotion code with a null default) registers under the default BACKWARD level and is
/// FORWARD compatible too; a variant that adds a field without a default is refused.
pub async fn place_order_v2_registers_and_a_breaking_variant_is_refused(db: TestDb) {
    let app = spawn_app(db).await;
    let subject = "saga.order.PlaceOrder";
    let released = |v: &str| std::fs::read_to_string(format!("{}/../../schemas/released/{subject}/{v}.avsc", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let (v1, v2) = (released("v1"), released("v2"));
    app.register(subject, &v1).await;
    let verdict = app.post(&format!("/compatibility/subjects/{subject}/versions/latest"), &json!({ "schema": v2 })).await.ok();
    assert_eq!(verdict, json!({ "is_compatible": true }));
    app.put(&format!("/config/{subject}"), &json!({ "compatibility": "FULL_TRANSITIVE" })).await.ok();
    app.register(subject, &v2).await;
    assert_eq!(app.get(&format!("/subjects/{subject}/versions")).await.ok(), json!([1, 2]));

    let mut breaking: serde_json::Value = serde_json::from_str(&v2).unwrap();
    breaking["fields"].as_array_mut().unwrap().push(json!({ "name": "gift_wrap", "type": "boolean" }));
    let message = app.try_register(subject, &breaking.to_string()).await.assert_error(409, 409);
    assert!(message.contains("gift_wrap"), "names the field: {message}");
    assert_eq!(app.get(&format!("/subjects/{subject}/versions")).await.ok(), json!([1, 2]), "refusal made no version");
}

pub async fn checks_compatibility_without_registering(db: TestDb) {
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
    assert_eq!(check("orders-value/versions/1?verbose=true", order_with_qty_default()).await.ok(), json!({ "is_compatible": true, "messages": [] }));
    check("orders-value/versions/7", order_v1()).await.assert_error(404, 40402);
    check("orders-value/versions/abc", order_v1()).await.assert_error(422, 42202);
    check("orders-value/versions/latest", "{".to_string()).await.assert_error(422, 42201);

    // The subject's own level decides.
    app.put("/config/orders-value", &json!({ "compatibility": "NONE" })).await.ok();
    assert_eq!(check("orders-value/versions/latest", order_with_qty()).await.ok(), fine);
    assert_eq!(app.get("/subjects/orders-value/versions").await.ok(), json!([1]), "checks register nothing");
}

pub async fn manages_compatibility_config(db: TestDb) {
    let app = spawn_app(db).await;
    assert_eq!(app.get("/config").await.ok(), json!({ "compatibilityLevel": "BACKWARD" }));
    assert_eq!(app.put("/config", &json!({ "compatibility": "FULL" })).await.ok(), json!({ "compatibility": "FULL" }));
    assert_eq!(app.get("/config").await.ok(), json!({ "compatibilityLevel": "FULL" }));

    let message = app.get("/config/orders-value").await.assert_error(404, 40408);
    assert_eq!(message, "Subject 'orders-value' does not have subject-level compatibility configured");
    assert_eq!(app.get("/config/orders-value?defaultToGlobal=true").await.ok(), json!({ "compatibilityLevel": "FULL" }));

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
