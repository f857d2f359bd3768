//! Layered, typed configuration: defaults, then a TOML file, then `SAGA_*` environment variables.
//!
//! Environment variables name a key by its path with `__` between levels:
//! `SAGA_KAFKA__BOOTSTRAP_SERVERS` sets `kafka.bootstrap_servers`. librdkafka settings pass through
//! `kafka.client` in the file, or `SAGA_KAFKA_CLIENT_<NAME>` with `_` for `.`
//! (`SAGA_KAFKA_CLIENT_SECURITY_PROTOCOL=SASL_SSL` sets `security.protocol`).
//! An unknown key in the file, or a value of the wrong type, stops startup with an error naming it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Provider as _};
use serde::{Deserialize, Serialize};

/// Settings every service reads. A service that reads more has a [`Section`] of its own (the
/// orchestrator's `saga`), loaded beside these by [`ServiceSettings::load_with`].
///
/// Unknown keys inside a table are refused by serde; unknown tables by [`ServiceSettings::load`]
/// (which knows the service's own sections), so this type does not deny them itself.
#[derive(Clone, Serialize, Deserialize)]
pub struct ServiceSettings {
    /// Broker connection and consumer group.
    pub kafka: KafkaSettings,
    /// Where schemas are registered and looked up.
    pub registry: RegistrySettings,
    /// The service's own database.
    pub database: DatabaseSettings,
    /// Topic names.
    pub topics: TopicSettings,
    /// How records are taken from Kafka.
    pub consumer: ConsumerSettings,
    /// How the outbox is published.
    pub relay: RelaySettings,
    /// Health and readiness endpoints.
    pub http: HttpSettings,
}

/// The tables of [`ServiceSettings`].
const SECTIONS: [&str; 7] = ["kafka", "registry", "database", "topics", "consumer", "relay", "http"];

/// A table of the configuration that one service reads beside the [`ServiceSettings`] every
/// service reads (the orchestrator's `saga`), from the same layers: its defaults, the file's
/// `[NAME]` table, then `SAGA_<NAME>__*` variables. Unknown keys in it are refused when its type
/// denies them (`#[serde(deny_unknown_fields)]`).
pub trait Section: Serialize + serde::de::DeserializeOwned {
    /// The table's name, e.g. `saga`.
    const NAME: &'static str;

    /// The values of the keys the file and the environment leave unset.
    fn defaults() -> Self;

    /// Checks values that parse but cannot work, naming the key (`saga.timer_interval_ms`).
    fn validate(&self) -> Result<(), ConfigError>;
}

/// The service's HTTP endpoints: `/healthz` (alive) and `/readyz` (database, registry and broker
/// reachable).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// `host:port` to listen on; empty turns the endpoints off. Localhost unless configured.
    pub bind: String,
    /// The orchestrator's saga view: the bearer token its retry and abort actions require (at
    /// least 16 characters); empty (the default) leaves the view read-only.
    pub operator_token: String,
}

/// Broker settings.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// `host:port[,host:port]` of the brokers.
    pub bootstrap_servers: String,
    /// Consumer group; instances of one service share it and split the partitions.
    pub group_id: String,
    /// Partitions per topic when this service creates topics.
    pub partitions: i32,
    /// Replication factor when this service creates topics.
    pub replication_factor: i32,
    /// Create missing topics at startup (with `partitions` and `replication_factor`).
    pub create_topics: bool,
    /// Longest a fetch waits at the broker for data. Kafka answers as soon as data arrives, so
    /// this only bounds idle polling; brokers that answer only at the deadline (the in-process
    /// mock cluster) need it low, and `sagactl dev` and `bench` use 2.
    pub fetch_wait_max_ms: u32,
    /// `plaintext`, `ssl` (TLS), `sasl_plaintext` or `sasl_ssl` (SASL over TLS).
    pub security_protocol: String,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; required with a `sasl_*` protocol.
    pub sasl_mechanism: String,
    /// SASL user; required with a `sasl_*` protocol.
    pub sasl_username: String,
    /// SASL password; required with a `sasl_*` protocol. Never printed.
    pub sasl_password: String,
    /// PEM file of the CA that signed the brokers' certificates; empty uses the system's roots.
    pub ssl_ca_location: String,
    /// Passed to librdkafka as is, for settings this file does not name (client certificates,
    /// tuning). Applied after the settings above, so it can override them.
    pub client: BTreeMap<String, String>,
}

/// Schema registry settings.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySettings {
    /// Base URL of a Confluent-compatible registry (`https://` for TLS).
    pub url: String,
    /// User for HTTP basic authentication; empty sends none.
    pub username: String,
    /// Password for HTTP basic authentication. Never printed.
    pub password: String,
    /// PEM file of the CA that signed the registry's certificate; empty uses the system's roots.
    pub ca_location: String,
}

impl RegistrySettings {
    /// A registry at `url`, without authentication or a custom CA.
    pub fn at(url: &str) -> RegistrySettings {
        RegistrySettings { url: url.into(), username: String::new(), password: String::new(), ca_location: String::new() }
    }
}

/// Database settings.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://file.db` or `postgres://user@host/db`.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
}

/// Topic naming.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    /// Every topic is `{prefix}.{name}`, e.g. `saga.order.commands`.
    pub prefix: String,
}

/// Consumer tuning.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSettings {
    /// Most records handled in one database transaction.
    pub batch_size: usize,
    /// How long a handled message id is remembered for dedupe, in hours; older inbox rows are
    /// deleted.
    pub inbox_retention_hours: u64,
    /// How long a partition this instance does not own may have records waiting while the
    /// group's committed offset does not move, before this instance leaves and rejoins the group,
    /// in milliseconds. A group coordinator that lost track of a member (a broker restart, a
    /// member restarted within the session timeout) otherwise leaves partitions with no owner.
    pub rejoin_after_ms: u64,
}

/// Outbox relay tuning.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySettings {
    /// Most outbox rows published in one burst.
    pub batch_size: usize,
    /// How often the relay looks in the outbox table for rows other programs wrote (`sagactl
    /// sagas retry/abort`), in milliseconds. Rows this service writes reach the relay in memory.
    pub poll_interval_ms: u64,
    /// How old a row written by another instance must be before this relay publishes it (that
    /// instance is taken to have died before publishing), in milliseconds.
    pub orphan_after_ms: u64,
}

impl ServiceSettings {
    /// Defaults for the named service (`order`, `inventory`, `payment`, `orchestrator`).
    pub fn defaults_for(service: &str) -> ServiceSettings {
        ServiceSettings {
            kafka: KafkaSettings {
                bootstrap_servers: "127.0.0.1:9092".into(),
                group_id: format!("saga-{service}"),
                partitions: 6,
                replication_factor: 1,
                create_topics: false,
                fetch_wait_max_ms: 100,
                security_protocol: "plaintext".into(),
                sasl_mechanism: String::new(),
                sasl_username: String::new(),
                sasl_password: String::new(),
                ssl_ca_location: String::new(),
                client: BTreeMap::new(),
            },
            registry: RegistrySettings::at("http://127.0.0.1:8081"),
            database: DatabaseSettings { url: format!("sqlite://{service}.db"), max_connections: 8 },
            topics: TopicSettings { prefix: "saga".into() },
            consumer: ConsumerSettings { batch_size: 500, inbox_retention_hours: 168, rejoin_after_ms: 8_000 },
            relay: RelaySettings { batch_size: 1000, poll_interval_ms: 100, orphan_after_ms: 10_000 },
            http: HttpSettings { bind: default_http_bind(service).into(), operator_token: String::new() },
        }
    }

    /// Loads defaults, then `file` (when given), then `SAGA_*` environment variables. A table in
    /// the file that no setting of a service has stops startup, named.
    pub fn load(service: &str, file: Option<&Path>) -> Result<ServiceSettings, ConfigError> {
        Self::load_sections(service, file, &[])
    }

    /// Like [`ServiceSettings::load`], with the service's own [`Section`] `S` read from the same
    /// file and environment.
    pub fn load_with<S: Section>(service: &str, file: Option<&Path>) -> Result<(ServiceSettings, S), ConfigError> {
        let settings = Self::load_sections(service, file, &[S::NAME])?;
        // Focused on the table, so each error's path is prefixed with its name here (figment's
        // `extract_inner` reports it after the key instead).
        let own: S = layered(Serialized::default(S::NAME, S::defaults()), file, &[S::NAME]).focus(S::NAME).extract().map_err(|e| {
            ConfigError::from_figment(e.into_iter().map(|mut e| {
                e.path.insert(0, S::NAME.to_string());
                e
            }))
        })?;
        own.validate()?;
        Ok((settings, own))
    }

    fn load_sections(service: &str, file: Option<&Path>, own: &[&str]) -> Result<ServiceSettings, ConfigError> {
        let known: Vec<&str> = SECTIONS.iter().chain(own).copied().collect();
        let figment = layered(Serialized::defaults(ServiceSettings::defaults_for(service)), file, &known);
        // Only the file can bring a table of its own: `layered` takes variables of known tables.
        for (_, table) in figment.data().map_err(ConfigError::from_figment)? {
            if let Some(unknown) = table.keys().find(|k| !known.contains(&k.as_str())) {
                let from = file.map(|f| format!(" (from {})", f.display())).unwrap_or_default();
                return Err(ConfigError::Parse(format!("unknown key {unknown:?}{from}; known keys: {}", known.join(", "))));
            }
        }
        let mut settings: ServiceSettings = figment.extract().map_err(ConfigError::from_figment)?;
        settings.kafka.client.extend(kafka_client_from_env());
        settings.validate()?;
        Ok(settings)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, why: &str| Err(ConfigError::Invalid { key: key.into(), reason: why.into() });
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return invalid("kafka.bootstrap_servers", "must not be empty");
        }
        if self.kafka.group_id.trim().is_empty() {
            return invalid("kafka.group_id", "must not be empty");
        }
        if self.kafka.partitions < 1 {
            return invalid("kafka.partitions", "must be at least 1");
        }
        if self.kafka.replication_factor < 1 {
            return invalid("kafka.replication_factor", "must be at least 1");
        }
        let token = &self.http.operator_token;
        if !token.is_empty() && (token.chars().count() < 16 || token.chars().any(char::is_whitespace)) {
            return invalid("http.operator_token", "must be at least 16 characters without spaces (or empty: the saga view stays read-only)");
        }
        self.kafka.validate()?;
        if !(self.registry.url.starts_with("http://") || self.registry.url.starts_with("https://")) {
            return invalid("registry.url", "must start with http:// or https://");
        }
        if self.registry.username.is_empty() != self.registry.password.is_empty() {
            return invalid("registry.username", "and registry.password must be set together");
        }
        if !self.registry.password.is_empty() && self.registry.url.starts_with("http://") && !is_loopback_url(&self.registry.url) {
            return invalid("registry.url", "must be https:// when a password is set (basic auth would travel in clear text)");
        }
        readable_file("registry.ca_location", &self.registry.ca_location)?;
        if !(self.database.url.starts_with("sqlite:") || self.database.url.starts_with("postgres")) {
            return invalid("database.url", "must start with sqlite: or postgres://");
        }
        if self.database.max_connections < 1 {
            return invalid("database.max_connections", "must be at least 1");
        }
        if self.consumer.batch_size < 1 {
            return invalid("consumer.batch_size", "must be at least 1");
        }
        if self.consumer.inbox_retention_hours < 1 {
            return invalid("consumer.inbox_retention_hours", "must be at least 1");
        }
        if self.consumer.rejoin_after_ms < 1000 {
            return invalid("consumer.rejoin_after_ms", "must be at least 1000: a rebalance must have time to finish");
        }
        if self.relay.batch_size < 1 {
            return invalid("relay.batch_size", "must be at least 1");
        }
        if self.relay.poll_interval_ms < 1 {
            return invalid("relay.poll_interval_ms", "must be at least 1");
        }
        if self.relay.orphan_after_ms < 1000 {
            return invalid("relay.orphan_after_ms", "must be at least 1000: a live instance must have time to publish its own rows");
        }
        if !self.http.bind.is_empty() && self.http.bind.parse::<std::net::SocketAddr>().is_err() {
            return invalid("http.bind", "must be host:port with a numeric address, e.g. 127.0.0.1:9101, or empty");
        }
        Ok(())
    }
}

/// librdkafka keys the delivery guarantee rests on, with why none may be overridden through
/// `kafka.client`: set there, each would quietly turn at-least-once into at-most-once (or lose
/// order, or records).
pub const GUARANTEE_KEYS: &[(&str, &str)] = &[
    ("enable.auto.commit", "offsets are committed in the background only after the transaction that applied a record is durable"),
    ("enable.auto.offset.store", "an offset is stored only after the transaction that applied its record committed"),
    ("auto.commit.interval.ms", "the background commit of stored offsets is part of the delivery guarantee"),
    ("group.id", "set kafka.group_id (SAGA_KAFKA__GROUP_ID) instead"),
    ("auto.offset.reset", "a new consumer group must start at the earliest record, or records are skipped"),
    ("isolation.level", "consumers must read only committed records"),
    ("enable.idempotence", "the relay's retries must neither duplicate nor reorder a partition's records"),
    ("acks", "a record counts as published only once every in-sync replica has it"),
    ("partitioner", "every client must put a key on the same partition (murmur2, as the Java client)"),
    ("partition.assignment.strategy", "deadlines need the range assignor: the same partition numbers of every topic, the whole assignment at each rebalance"),
];

impl KafkaSettings {
    /// Checks the security settings (a known protocol, and with SASL a mechanism and
    /// credentials), and that `client` overrides no key of [`GUARANTEE_KEYS`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, why: &str| Err(ConfigError::Invalid { key: key.into(), reason: why.into() });
        for key in self.client.keys() {
            if let Some((_, why)) = GUARANTEE_KEYS.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
                return invalid(&format!("kafka.client.{key}"), &format!("cannot be overridden: {why}"));
            }
        }
        let sasl = match self.security_protocol.to_ascii_lowercase().as_str() {
            "plaintext" | "ssl" => false,
            "sasl_plaintext" | "sasl_ssl" => true,
            _ => return invalid("kafka.security_protocol", "must be plaintext, ssl, sasl_plaintext or sasl_ssl"),
        };
        if sasl {
            if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&self.sasl_mechanism.as_str()) {
                return invalid("kafka.sasl_mechanism", "must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 with a sasl_* security_protocol");
            }
            if self.sasl_username.is_empty() {
                return invalid("kafka.sasl_username", "must be set with a sasl_* security_protocol");
            }
            if self.sasl_password.is_empty() {
                return invalid("kafka.sasl_password", "must be set with a sasl_* security_protocol");
            }
        } else if !self.sasl_mechanism.is_empty() || !self.sasl_username.is_empty() || !self.sasl_password.is_empty() {
            return invalid("kafka.security_protocol", "must be sasl_plaintext or sasl_ssl when SASL credentials are set");
        }
        readable_file("kafka.ssl_ca_location", &self.ssl_ca_location)
    }

    /// The librdkafka properties these settings stand for, before `client` overrides.
    pub fn librdkafka_properties(&self) -> Vec<(&'static str, String)> {
        let mut props = vec![("bootstrap.servers", self.bootstrap_servers.clone()), ("security.protocol", self.security_protocol.to_ascii_lowercase())];
        if !self.sasl_mechanism.is_empty() {
            props.push(("sasl.mechanism", self.sasl_mechanism.clone()));
            props.push(("sasl.username", self.sasl_username.clone()));
            props.push(("sasl.password", self.sasl_password.clone()));
        }
        if !self.ssl_ca_location.is_empty() {
            props.push(("ssl.ca.location", self.ssl_ca_location.clone()));
        }
        props
    }
}

/// An empty path is unset; a set one must name a file this process can read.
fn readable_file(key: &str, path: &str) -> Result<(), ConfigError> {
    if path.is_empty() || std::fs::File::open(path).is_ok() {
        return Ok(());
    }
    Err(ConfigError::Invalid { key: key.into(), reason: format!("names {path}, which cannot be read") })
}

fn is_loopback_url(url: &str) -> bool {
    let host = url.split("://").nth(1).unwrap_or("").split(['/', ':']).next().unwrap_or("");
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

/// Each service gets its own port, so all four can run on one host with their defaults.
fn default_http_bind(service: &str) -> &'static str {
    match service {
        "order" => "127.0.0.1:9101",
        "inventory" => "127.0.0.1:9102",
        "payment" => "127.0.0.1:9103",
        "orchestrator" => "127.0.0.1:9104",
        "query" => "127.0.0.1:9105",
        _ => "",
    }
}

/// The figment every settings type of this workspace is read from: `base`, then the file, then
/// the environment. Environment keys outside `sections` (the top-level tables of the settings) are
/// ignored, so unrelated `SAGA_*` variables do not break startup.
pub fn layered(base: impl figment::Provider, file: Option<&Path>, sections: &[&str]) -> Figment {
    let sections: Vec<String> = sections.iter().map(|s| format!("{s}__")).collect();
    let mut figment = Figment::from(base);
    if let Some(path) = file {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment.merge(
        Env::prefixed("SAGA_")
            .filter(move |k| {
                let k = k.as_str().to_ascii_lowercase();
                !k.starts_with("kafka_client_") && sections.iter().any(|s| k.starts_with(s.as_str()))
            })
            .split("__"),
    )
}

/// librdkafka settings from `SAGA_KAFKA_CLIENT_<NAME>` variables: `_` in the name becomes `.`.
fn kafka_client_from_env() -> BTreeMap<String, String> {
    std::env::vars().filter_map(|(k, v)| k.strip_prefix("SAGA_KAFKA_CLIENT_").map(|name| (name.to_ascii_lowercase().replace('_', "."), v))).collect()
}

/// A setting that stops startup.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The value could not be read, or a key is unknown.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// The value was read but cannot work.
    #[error("invalid configuration: {key} {reason}")]
    Invalid {
        /// Dotted path of the key, e.g. `kafka.partitions`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ConfigError {
    fn from_figment(errors: impl IntoIterator<Item = figment::Error>) -> ConfigError {
        ConfigError::Parse(errors.into_iter().map(|e| describe(&e)).collect::<Vec<_>>().join("; "))
    }
}

/// One figment error as a sentence a person reads: the dotted key, where its value came from (the
/// variable or the file), and what was wrong, e.g.
/// `kafka.partitions (from SAGA_KAFKA__PARTITIONS): expected an integer, found string "abc"`.
pub fn describe(e: &figment::Error) -> String {
    use figment::error::Kind;
    let key = e.path.join(".");
    let from = e.metadata.as_ref().map(|m| match &m.source {
        Some(figment::Source::File(path)) => path.display().to_string(),
        // The `SAGA_` variables, split on `__` (see `layered`).
        _ if m.name.contains("environment variable") && !e.path.is_empty() => {
            format!("SAGA_{}", e.path.iter().map(|k| k.to_ascii_uppercase()).collect::<Vec<_>>().join("__"))
        }
        _ => m.name.to_string(),
    });
    let what = match &e.kind {
        Kind::InvalidType(found, expected) | Kind::InvalidValue(found, expected) => format!("expected {}, found {found}", plain_type(expected)),
        Kind::UnknownField(field, known) => {
            let where_ = if key.is_empty() { String::new() } else { format!(" in {key}") };
            return format!("unknown key {field:?}{where_}{}; known keys: {}", from.map(|f| format!(" (from {f})")).unwrap_or_default(), known.join(", "));
        }
        Kind::UnknownVariant(found, known) => format!("{found:?} is not one of {}", known.join(", ")),
        Kind::MissingField(field) => format!("missing key {field}"),
        other => other.to_string(),
    };
    match (key.is_empty(), from) {
        (false, Some(from)) => format!("{key} (from {from}): {what}"),
        (false, None) => format!("{key}: {what}"),
        (true, Some(from)) => format!("{from}: {what}"),
        (true, None) => what,
    }
}

/// serde's name of an expected type, in words.
fn plain_type(expected: &str) -> String {
    match expected {
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer".into(),
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number (0 or more)".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" | "bool" => "true or false".into(),
        other => other.into(),
    }
}

const SECRET_MARKERS: [&str; 4] = ["password", "secret", "key", "token"];

/// Redacts the values of keys that look like credentials.
pub fn redact(key: &str, value: &str) -> String {
    if !value.is_empty() && SECRET_MARKERS.iter().any(|m| key.to_ascii_lowercase().contains(m)) && !key.ends_with(".location") {
        "***".into()
    } else {
        value.into()
    }
}

impl fmt::Debug for ServiceSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let client: BTreeMap<_, _> = self.kafka.client.iter().map(|(k, v)| (k.clone(), redact(k, v))).collect();
        f.debug_struct("ServiceSettings")
            .field("kafka.bootstrap_servers", &self.kafka.bootstrap_servers)
            .field("kafka.group_id", &self.kafka.group_id)
            .field("kafka.partitions", &self.kafka.partitions)
            .field("kafka.security_protocol", &self.kafka.security_protocol)
            .field("kafka.sasl_mechanism", &self.kafka.sasl_mechanism)
            .field("kafka.sasl_username", &self.kafka.sasl_username)
            .field("kafka.sasl_password", &redact("password", &self.kafka.sasl_password))
            .field("kafka.ssl_ca_location", &self.kafka.ssl_ca_location)
            .field("kafka.client", &client)
            .field("registry.url", &saga_store::redact_url(&self.registry.url))
            .field("registry.username", &self.registry.username)
            .field("registry.password", &redact("password", &self.registry.password))
            .field("registry.ca_location", &self.registry.ca_location)
            .field("database.url", &saga_store::redact_url(&self.database.url))
            .field("topics.prefix", &self.topics.prefix)
            .field("consumer.batch_size", &self.consumer.batch_size)
            .field("relay.batch_size", &self.relay.batch_size)
            .field("relay.poll_interval_ms", &self.relay.poll_interval_ms)
            .field("relay.orphan_after_ms", &self.relay.orphan_after_ms)
            .field("http.bind", &self.http.bind)
            .finish()
    }
}

#[cfg(test)]
// figment's Jail API returns its large error type; nothing to gain from boxing it in tests.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    /// Loads `text` as the config file inside a figment jail, which serializes the tests that
    /// touch the environment.
    fn load(text: &str) -> Result<ServiceSettings, ConfigError> {
        let mut out = None;
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", text)?;
            out = Some(ServiceSettings::load("order", Some(Path::new("c.toml"))));
            Ok(())
        });
        out.unwrap()
    }

    #[test]
    fn file_overrides_defaults() {
        let s = load("[kafka]\nbootstrap_servers = \"b:1\"\npartitions = 12\n[kafka.client]\n\"sasl.password\" = \"hunter2\"\n").unwrap();
        assert_eq!(s.kafka.bootstrap_servers, "b:1");
        assert_eq!(s.kafka.partitions, 12);
        assert_eq!(s.kafka.group_id, "saga-order");
        assert_eq!(s.kafka.client["sasl.password"], "hunter2");
        assert!(!format!("{s:?}").contains("hunter2"), "secrets must not appear in Debug output");
    }

    #[test]
    fn wrong_type_names_the_key_and_where_it_came_from_in_words() {
        let e = load("[kafka]\npartitions = \"many\"\n").unwrap_err().to_string();
        assert!(e.contains("kafka.partitions (from ") && e.contains("c.toml): expected an integer, found string \"many\""), "{e}");
        figment::Jail::expect_with(|jail| {
            jail.set_env("SAGA_KAFKA__PARTITIONS", "abc");
            let e = ServiceSettings::load("order", None).unwrap_err().to_string();
            assert_eq!(e, "invalid configuration: kafka.partitions (from SAGA_KAFKA__PARTITIONS): expected an integer, found string \"abc\"");
            Ok(())
        });
    }

    #[test]
    fn unknown_key_names_the_key() {
        let e = load("[kafka]\nbootstrap_server = \"typo:1\"\n").unwrap_err().to_string();
        assert!(e.contains("bootstrap_server"), "{e}");
    }

    #[test]
    fn a_passthrough_of_a_guarantee_key_is_refused_with_the_key_named() {
        for (key, _) in GUARANTEE_KEYS {
            let e = load(&format!("[kafka.client]\n\"{key}\" = \"x\"\n")).unwrap_err().to_string();
            assert!(e.contains(&format!("kafka.client.{key}")) && e.contains("cannot be overridden"), "{key}: {e}");
        }
        let s = load("[kafka.client]\n\"message.timeout.ms\" = \"8000\"\n").expect("other keys pass through");
        assert_eq!(s.kafka.client["message.timeout.ms"], "8000");
    }

    #[test]
    fn invalid_value_names_the_key() {
        let e = load("[kafka]\npartitions = 0\n").unwrap_err().to_string();
        assert!(e.contains("kafka.partitions"), "{e}");
    }

    /// A section of a service's own, as the orchestrator's `saga` is.
    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Own {
        limit: u32,
        name: String,
    }

    impl Section for Own {
        const NAME: &'static str = "own";

        fn defaults() -> Own {
            Own { limit: 5, name: "n".into() }
        }

        fn validate(&self) -> Result<(), ConfigError> {
            if self.limit < 1 {
                return Err(ConfigError::Invalid { key: "own.limit".into(), reason: "must be at least 1".into() });
            }
            Ok(())
        }
    }

    #[test]
    fn a_services_own_section_is_read_from_the_same_layers_and_checked_with_the_key_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[kafka]\npartitions = 3\n[own]\nlimit = 7\n")?;
            jail.set_env("SAGA_OWN__NAME", "from-env");
            let (s, own) = ServiceSettings::load_with::<Own>("orchestrator", Some(Path::new("c.toml"))).unwrap();
            assert_eq!((s.kafka.partitions, own.limit, own.name.as_str()), (3, 7, "from-env"));
            jail.create_file("bad.toml", "[own]\nlimit = 0\n")?;
            let e = ServiceSettings::load_with::<Own>("orchestrator", Some(Path::new("bad.toml"))).unwrap_err().to_string();
            assert_eq!(e, "invalid configuration: own.limit must be at least 1");
            jail.create_file("typo.toml", "[own]\nlimt = 2\n")?;
            let e = ServiceSettings::load_with::<Own>("orchestrator", Some(Path::new("typo.toml"))).unwrap_err().to_string();
            assert!(e.contains("unknown key \"limt\" in own") && e.contains("typo.toml"), "{e}");
            jail.set_env("SAGA_OWN__LIMIT", "many");
            let e = ServiceSettings::load_with::<Own>("orchestrator", None).unwrap_err().to_string();
            assert!(e.contains("own.limit (from SAGA_OWN__LIMIT): expected a whole number"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn a_table_no_setting_of_the_service_has_is_refused_by_name() {
        let e = load("[own]\nlimit = 2\n").unwrap_err().to_string();
        assert!(e.contains("unknown key \"own\" (from c.toml)") && e.contains("known keys: kafka,"), "{e}");
        let e = load("[kafk]\npartitions = 2\n").unwrap_err().to_string();
        assert!(e.contains("unknown key \"kafk\""), "{e}");
    }

    #[test]
    fn the_group_watch_interval_is_read_and_checked_with_the_key_named() {
        assert_eq!(load("[consumer]\nrejoin_after_ms = 5000\n").unwrap().consumer.rejoin_after_ms, 5000);
        let e = load("[consumer]\nrejoin_after_ms = 10\n").unwrap_err().to_string();
        assert!(e.contains("consumer.rejoin_after_ms"), "{e}");
    }

    #[test]
    fn a_bad_http_bind_names_the_key() {
        let e = load("[http]\nbind = \"localhost\"\n").unwrap_err().to_string();
        assert!(e.contains("http.bind"), "{e}");
        assert_eq!(load("[http]\nbind = \"\"\n").unwrap().http.bind, "");
    }

    #[test]
    fn sasl_needs_a_mechanism_and_credentials_and_names_the_missing_key() {
        let e = load("[kafka]\nsecurity_protocol = \"sasl_ssl\"\n").unwrap_err().to_string();
        assert!(e.contains("kafka.sasl_mechanism"), "{e}");
        let e = load("[kafka]\nsecurity_protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"u\"\n").unwrap_err().to_string();
        assert!(e.contains("kafka.sasl_password"), "{e}");
        let e = load("[kafka]\nsecurity_protocol = \"tls\"\n").unwrap_err().to_string();
        assert!(e.contains("kafka.security_protocol"), "{e}");
        let e = load("[kafka]\nsasl_password = \"p\"\n").unwrap_err().to_string();
        assert!(e.contains("kafka.security_protocol"), "credentials without SASL are a mistake: {e}");
    }

    #[test]
    fn sasl_settings_become_librdkafka_properties_and_are_never_printed() {
        let s = load("[kafka]\nsecurity_protocol = \"SASL_SSL\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"svc\"\nsasl_password = \"pa55-w0rd-k\"\n[registry]\nurl = \"https://r:8081\"\nusername = \"ru\"\npassword = \"r3g-pa55\"\n").unwrap();
        let props: BTreeMap<_, _> = s.kafka.librdkafka_properties().into_iter().collect();
        assert_eq!(props["security.protocol"], "sasl_ssl");
        assert_eq!(props["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(props["sasl.username"], "svc");
        assert_eq!(props["sasl.password"], "pa55-w0rd-k");
        let shown = format!("{s:?}");
        assert!(!shown.contains("pa55-w0rd-k") && !shown.contains("r3g-pa55"), "{shown}");
        assert!(shown.contains("svc"), "user names are not secret: {shown}");
    }

    #[test]
    fn a_ca_file_that_cannot_be_read_names_the_key() {
        let e = load("[kafka]\nssl_ca_location = \"/nonexistent/ca.pem\"\n").unwrap_err().to_string();
        assert!(e.contains("kafka.ssl_ca_location") && e.contains("/nonexistent/ca.pem"), "{e}");
        let e = load("[registry]\nca_location = \"/nonexistent/ca.pem\"\n").unwrap_err().to_string();
        assert!(e.contains("registry.ca_location"), "{e}");
    }

    #[test]
    fn registry_credentials_need_both_parts_and_tls_off_localhost() {
        let e = load("[registry]\nusername = \"u\"\n").unwrap_err().to_string();
        assert!(e.contains("registry.username"), "{e}");
        let e = load("[registry]\nurl = \"http://registry:8081\"\nusername = \"u\"\npassword = \"p\"\n").unwrap_err().to_string();
        assert!(e.contains("registry.url") && e.contains("https"), "{e}");
        assert!(load("[registry]\nurl = \"http://127.0.0.1:8081\"\nusername = \"u\"\npassword = \"p\"\n").is_ok());
    }

    #[test]
    fn http_endpoints_listen_on_localhost_unless_configured() {
        for service in ["order", "inventory", "payment", "orchestrator"] {
            let bind: std::net::SocketAddr = ServiceSettings::defaults_for(service).http.bind.parse().unwrap();
            assert!(bind.ip().is_loopback(), "{service} listens on {bind} by default");
        }
    }

    #[test]
    fn environment_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[database]\nurl = \"sqlite://a.db\"\n")?;
            jail.set_env("SAGA_DATABASE__URL", "postgres://u@h/db");
            jail.set_env("SAGA_KAFKA_CLIENT_SECURITY_PROTOCOL", "SASL_SSL");
            jail.set_env("SAGA_UNRELATED", "x");
            let s = ServiceSettings::load("order", Some(Path::new("c.toml"))).unwrap();
            assert_eq!(s.database.url, "postgres://u@h/db");
            assert_eq!(s.kafka.client["security.protocol"], "SASL_SSL");
            Ok(())
        });
    }
}
