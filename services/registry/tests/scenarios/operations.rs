//! Operating concerns: database outages, several instances on one database, and a real client.

use saga_sandbox::TestDb;
use saga_store::Db;
use serde_json::json;

use crate::support::*;

pub async fn storage_failures_are_500(db: TestDb) {
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

pub async fn instances_sharing_a_database_agree_on_ids(db: TestDb) {
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

pub async fn schema_registry_converter_round_trips(db: TestDb) {
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
