//! Black-box tests: the real registry on 127.0.0.1:0, driven over HTTP, on SQLite and PostgreSQL.
//!
//! Each scenario in `scenarios/` is written once and run on both backends below.

mod scenarios;
mod support;

use scenarios::*;

saga_sandbox::backend_tests!(
    registers_and_serves_schemas,
    looks_up_schemas_under_a_subject,
    rejects_malformed_requests,
    enforces_compatibility_on_register,
    place_order_v2_registers_and_a_breaking_variant_is_refused,
    checks_compatibility_without_registering,
    manages_compatibility_config,
    deletes_softly_then_permanently,
    storage_failures_are_500,
    instances_sharing_a_database_agree_on_ids,
    schema_registry_converter_round_trips,
);

#[test]
fn a_bad_argument_is_named() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_saga-registry")).args(["--bind", "not-an-address"]).output().expect("run saga-registry");
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
