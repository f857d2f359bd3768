-- Runs once, when the compose PostgreSQL starts on an empty data directory.
-- One database per service, each owned by its own role, so no service can read another's tables.
-- DEV ONLY: these passwords are public; production databases and credentials are provisioned
-- outside this repository and reach the services through Kubernetes Secrets.
CREATE ROLE saga_order LOGIN PASSWORD 'order-dev-only';
CREATE ROLE saga_inventory LOGIN PASSWORD 'inventory-dev-only';
CREATE ROLE saga_payment LOGIN PASSWORD 'payment-dev-only';
CREATE ROLE saga_orchestrator LOGIN PASSWORD 'orchestrator-dev-only';
CREATE ROLE saga_query LOGIN PASSWORD 'query-dev-only';

-- "order" is a reserved word, hence the quotes.
CREATE DATABASE "order" OWNER saga_order;
CREATE DATABASE inventory OWNER saga_inventory;
CREATE DATABASE payment OWNER saga_payment;
CREATE DATABASE orchestrator OWNER saga_orchestrator;
CREATE DATABASE query OWNER saga_query;

-- Only the owner (and superusers) may connect.
REVOKE CONNECT ON DATABASE "order", inventory, payment, orchestrator, query FROM PUBLIC;
