//! The Avro schema files under `schemas/`, embedded at build time.

/// `(full name, schema JSON)` of every message type, as written in `schemas/`.
pub const SCHEMA_FILES: &[(&str, &str)] = &[
    ("saga.order.PlaceOrder", include_str!("../../../schemas/order/PlaceOrder.avsc")),
    ("saga.order.ApproveOrder", include_str!("../../../schemas/order/ApproveOrder.avsc")),
    ("saga.order.RejectOrder", include_str!("../../../schemas/order/RejectOrder.avsc")),
    ("saga.order.OrderCreated", include_str!("../../../schemas/order/OrderCreated.avsc")),
    ("saga.order.OrderApproved", include_str!("../../../schemas/order/OrderApproved.avsc")),
    ("saga.order.OrderRejected", include_str!("../../../schemas/order/OrderRejected.avsc")),
    ("saga.inventory.ReserveStock", include_str!("../../../schemas/inventory/ReserveStock.avsc")),
    ("saga.inventory.ReleaseStock", include_str!("../../../schemas/inventory/ReleaseStock.avsc")),
    ("saga.inventory.StockReserved", include_str!("../../../schemas/inventory/StockReserved.avsc")),
    ("saga.inventory.StockReservationFailed", include_str!("../../../schemas/inventory/StockReservationFailed.avsc")),
    ("saga.inventory.StockReleased", include_str!("../../../schemas/inventory/StockReleased.avsc")),
    ("saga.payment.AuthorizePayment", include_str!("../../../schemas/payment/AuthorizePayment.avsc")),
    ("saga.payment.VoidPayment", include_str!("../../../schemas/payment/VoidPayment.avsc")),
    ("saga.payment.PaymentAuthorized", include_str!("../../../schemas/payment/PaymentAuthorized.avsc")),
    ("saga.payment.PaymentDeclined", include_str!("../../../schemas/payment/PaymentDeclined.avsc")),
    ("saga.payment.PaymentVoided", include_str!("../../../schemas/payment/PaymentVoided.avsc")),
    ("saga.payment.CheckRisk", include_str!("../../../schemas/payment/CheckRisk.avsc")),
    ("saga.payment.RiskAccepted", include_str!("../../../schemas/payment/RiskAccepted.avsc")),
    ("saga.payment.RiskRejected", include_str!("../../../schemas/payment/RiskRejected.avsc")),
];

/// The schema file text of a message type, by full Avro name.
pub fn schema_file(full_name: &str) -> Option<&'static str> {
    SCHEMA_FILES.iter().find(|(n, _)| *n == full_name).map(|(_, s)| *s)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use apache_avro::schema_compatibility::SchemaCompatibility;
    use apache_avro::Schema;

    use super::*;
    use crate::Message;

    fn schemas_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
    }

    #[test]
    fn every_message_type_has_exactly_one_schema_file() {
        let mut names: Vec<_> = SCHEMA_FILES.iter().map(|(n, _)| *n).collect();
        names.sort();
        let mut types = Message::FULL_NAMES.to_vec();
        types.sort();
        assert_eq!(names, types);
        // And nothing under schemas/ is left out of this list.
        let mut on_disk = Vec::new();
        for ns in std::fs::read_dir(schemas_dir()).unwrap() {
            let ns = ns.unwrap().path();
            if !ns.is_dir() || ns.file_name().unwrap() == "released" {
                continue;
            }
            for f in std::fs::read_dir(&ns).unwrap() {
                on_disk.push(f.unwrap().path());
            }
        }
        assert_eq!(on_disk.len(), SCHEMA_FILES.len(), "schema files on disk: {on_disk:?}");
    }

    #[test]
    fn rust_types_match_schema_files() {
        for (name, text) in SCHEMA_FILES {
            let file = Schema::parse_str(text).unwrap_or_else(|e| panic!("{name}: invalid schema file: {e}"));
            let derived = Message::schema_of(name).unwrap();
            assert_eq!(file.canonical_form(), derived.canonical_form(), "{name}: the Rust type and schemas/ disagree");
            assert_eq!(file.name().map(|n| n.fullname(None)), Some(name.to_string()));
        }
    }

    /// Every schema must stay readable against every released version in both directions that
    /// BACKWARD needs: the current schema (reader) reads data written with each released version.
    /// To change a schema, make it backward compatible and add it under `schemas/released/` as the
    /// next version.
    #[test]
    fn schemas_are_backward_compatible_with_released_versions() {
        for (name, text) in SCHEMA_FILES {
            let current = Schema::parse_str(text).unwrap();
            let dir = schemas_dir().join("released").join(name);
            let mut versions: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{name}: no released versions in {}: {e}", dir.display()))
                .map(|e| e.unwrap().path())
                .collect();
            versions.sort();
            assert!(!versions.is_empty(), "{name}: no released versions");
            for v in &versions {
                let released = Schema::parse_str(&std::fs::read_to_string(v).unwrap()).unwrap();
                if let Err(e) = SchemaCompatibility::can_read(&released, &current) {
                    panic!("{name}: current schema cannot read data written with {}: {e}", v.display());
                }
            }
            let latest = Schema::parse_str(&std::fs::read_to_string(versions.last().unwrap()).unwrap()).unwrap();
            assert_eq!(
                latest.canonical_form(),
                current.canonical_form(),
                "{name}: the schema changed; add it under schemas/released/{name}/ as the next version"
            );
        }
    }

    #[test]
    fn compatibility_check_catches_a_breaking_change() {
        // The check above must be able to fail: a new required field without default is not
        // backward compatible.
        let (_, text) = SCHEMA_FILES[0];
        let mut json: serde_json::Value = serde_json::from_str(text).unwrap();
        json["fields"].as_array_mut().unwrap().push(serde_json::json!({"name": "added", "type": "string"}));
        let changed = Schema::parse(&json).unwrap();
        let old = Schema::parse_str(text).unwrap();
        assert!(SchemaCompatibility::can_read(&old, &changed).is_err());
        json["fields"].as_array_mut().unwrap().pop();
        json["fields"].as_array_mut().unwrap().push(serde_json::json!({"name": "added", "type": "string", "default": ""}));
        assert!(SchemaCompatibility::can_read(&old, &Schema::parse(&json).unwrap()).is_ok());
    }
}
