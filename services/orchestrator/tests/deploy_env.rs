//! The deployment artifacts (docker-compose.yml, deploy/k8s) may set only the variables listed in
//! `deploy/config/env-vars.txt`, and `deploy/validate.sh` checks them against that list. This test
//! keeps the list honest: its `[services]` section names exactly the keys the configuration
//! loader accepts (the settings every service reads, and the orchestrator's own `saga` table), so
//! a renamed or new setting fails here until the list (and with it the manifests) follows.

use std::collections::BTreeSet;

use saga_orchestrator::SagaSettings;
use saga_runtime::{Section, ServiceSettings};

/// The dotted keys of the settings, from their serialized defaults (maps are one key).
fn config_keys() -> BTreeSet<String> {
    let mut value = serde_json::to_value(ServiceSettings::defaults_for("order")).unwrap();
    value[SagaSettings::NAME] = serde_json::to_value(SagaSettings::default()).unwrap();
    let mut keys = BTreeSet::new();
    for (section, table) in value.as_object().unwrap() {
        for key in table.as_object().unwrap().keys() {
            keys.insert(format!("{section}.{key}"));
        }
    }
    keys
}

fn listed(section: &str) -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/config/env-vars.txt");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut current = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_string();
        } else if current == section {
            out.push(line.to_string());
        }
    }
    out
}

#[test]
fn the_listed_service_variables_are_exactly_the_configuration_keys() {
    let keys = config_keys();
    let mut covered = BTreeSet::new();
    for var in listed("services") {
        if let Some(path) = var.strip_prefix("SAGA_").filter(|v| v.contains("__")) {
            let key = path.to_ascii_lowercase().replacen("__", ".", 1);
            assert!(keys.contains(&key), "{var} is listed but the configuration has no key {key}");
            assert_ne!(key, "kafka.client", "kafka.client is set through SAGA_KAFKA_CLIENT_<NAME>, not {var}");
            covered.insert(key);
        } else {
            // Read outside the configuration loader; each is named in the code that reads it.
            let read_by = match var.as_str() {
                "SAGA_CONFIG" => include_str!("../../../shared/runtime/src/service.rs"),
                "SAGA_LOG_FORMAT" => include_str!("../../../shared/runtime/src/telemetry.rs"),
                "SAGA_KAFKA_CLIENT_*" => include_str!("../../../shared/runtime/src/config.rs"),
                other => panic!("{other} is listed for the services, but nothing there reads it"),
            };
            let name = var.trim_end_matches('*');
            assert!(read_by.contains(name), "{var} is listed but not read where expected");
        }
    }
    let missing: Vec<_> = keys.iter().filter(|k| *k != "kafka.client" && !covered.contains(*k)).collect();
    assert!(missing.is_empty(), "configuration keys without a variable in deploy/config/env-vars.txt: {missing:?}");
}
