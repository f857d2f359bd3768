//! A submitted schema, parsed, and the fingerprint that decides whether two submissions are the
//! same schema.
//!
//! The fingerprint is the SHA-256 of the schema's *normalized* JSON: apache-avro re-serializes the
//! parsed schema, so whitespace and key order vanish while `default`, `doc`, `aliases`, logical
//! types and custom properties stay. Avro's Parsing Canonical Form would be too coarse: it drops
//! defaults and logical types, so a resubmission that only adds `"default": 0` (exactly the change
//! that makes a schema backward compatible) would be handed the old id, whose schema has none.

use apache_avro::Schema;
use sha2::{Digest, Sha256};

/// A schema that parsed, with what the store needs to deduplicate it.
#[derive(Debug, Clone)]
pub struct ParsedSchema {
    /// The parsed form, for compatibility checks.
    pub schema: Schema,
    /// The text as submitted; what the registry hands back to clients.
    pub text: String,
    /// Hex SHA-256 of the normalized form; equal fingerprints mean the same schema.
    pub fingerprint: String,
}

/// Parses an Avro schema given as JSON text.
pub fn parse(text: &str) -> Result<ParsedSchema, String> {
    let schema = Schema::parse_str(text).map_err(|e| e.to_string())?;
    let normalized = serde_json::to_string(&schema).map_err(|e| format!("cannot normalize schema: {e}"))?;
    let fingerprint = format!("{:x}", Sha256::digest(normalized.as_bytes()));
    Ok(ParsedSchema { schema, text: text.to_string(), fingerprint })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: &str = r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"string"}]}"#;

    #[test]
    fn whitespace_and_key_order_do_not_change_the_fingerprint() {
        let reformatted = r#"{
            "name": "Order", "type": "record",
            "fields": [ { "type": "string", "name": "id" } ]
        }"#;
        assert_eq!(parse(ORDER).unwrap().fingerprint, parse(reformatted).unwrap().fingerprint);
    }

    #[test]
    fn defaults_and_logical_types_change_the_fingerprint() {
        let with_default = r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"string","default":""}]}"#;
        assert_ne!(parse(ORDER).unwrap().fingerprint, parse(with_default).unwrap().fingerprint);
        assert_ne!(parse(r#""long""#).unwrap().fingerprint, parse(r#"{"type":"long","logicalType":"timestamp-millis"}"#).unwrap().fingerprint);
    }

    #[test]
    fn keeps_the_submitted_text() {
        assert_eq!(parse(ORDER).unwrap().text, ORDER);
    }

    #[test]
    fn rejects_what_is_not_avro() {
        assert!(parse("{\"type\":\"record\"}").is_err(), "record without name");
        assert!(parse("not json").is_err());
    }
}
