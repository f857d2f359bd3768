//! `saga-registry`: the development schema registry as a process.

/// mimalloc rather than the system allocator: many threads allocate small objects per message.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use saga_registry::{Registry, RegistrySettings};

/// A Confluent-compatible Avro schema registry for development and tests.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "SAGA_REGISTRY_BIND", default_value_t = RegistrySettings::default().bind)]
    bind: SocketAddr,
    /// Database URL: sqlite://path or postgres://user@host/db.
    #[arg(long, env = "SAGA_REGISTRY_DATABASE_URL", default_value_t = RegistrySettings::default().database_url)]
    database_url: String,
    /// Require HTTP basic authentication with this user (and `--basic-auth-password`).
    #[arg(long, env = "SAGA_REGISTRY_BASIC_AUTH_USERNAME", requires = "basic_auth_password")]
    basic_auth_username: Option<String>,
    /// Password for `--basic-auth-username`; prefer the environment variable, which `ps` does not show.
    #[arg(long, env = "SAGA_REGISTRY_BASIC_AUTH_PASSWORD", hide_env_values = true, requires = "basic_auth_username")]
    basic_auth_password: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Logs go to stderr; stdout carries only the line announcing the URL.
    saga_runtime::telemetry::init_logging();
    let settings = RegistrySettings { bind: args.bind, database_url: args.database_url };
    let mut registry = Registry::build(&settings).await.with_context(|| format!("start schema registry on {}", settings.bind))?;
    if let (Some(user), Some(password)) = (&args.basic_auth_username, &args.basic_auth_password) {
        registry = registry.with_basic_auth(user, password);
    }
    println!("schema registry listening on {}", registry.url());
    registry.run_until_stopped(saga_runtime::telemetry::shutdown_signal()).await.context("run schema registry")
}
