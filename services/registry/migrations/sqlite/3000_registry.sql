-- Schema registry tables (versions 3000-3999 belong to saga-registry).

-- Schemas are global: one row per distinct schema, whichever subjects use it.
CREATE TABLE registry_schemas (
    id            BIGINT PRIMARY KEY,
    -- SHA-256 of the normalized schema JSON: identical schemas share one id.
    fingerprint   TEXT NOT NULL UNIQUE,
    -- As first submitted; what clients get back.
    schema_text   TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- A subject is a numbered list of schemas; deleted versions are hidden, not removed.
CREATE TABLE registry_versions (
    subject       TEXT NOT NULL,
    version       BIGINT NOT NULL,
    schema_id     BIGINT NOT NULL REFERENCES registry_schemas (id),
    created_at_ms BIGINT NOT NULL,
    deleted_at_ms BIGINT,
    PRIMARY KEY (subject, version)
);

CREATE INDEX registry_versions_by_schema ON registry_versions (schema_id);

-- Compatibility levels; the empty subject holds the global level.
CREATE TABLE registry_config (
    subject       TEXT PRIMARY KEY,
    compatibility TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
