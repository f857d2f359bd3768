-- DEV ONLY (Kubernetes dev overlay): runs once on an empty data directory. One database and one
-- owner role per service, plus one for the development schema registry. The passwords are public.
CREATE ROLE saga_order LOGIN PASSWORD 'order-dev-only';
CREATE ROLE saga_inventory LOGIN PASSWORD 'inventory-dev-only';
CREATE ROLE saga_payment LOGIN PASSWORD 'payment-dev-only';
CREATE ROLE saga_orchestrator LOGIN PASSWORD 'orchestrator-dev-only';
CREATE ROLE saga_query LOGIN PASSWORD 'query-dev-only';
CREATE ROLE saga_registry LOGIN PASSWORD 'registry-dev-only';

-- "order" is a reserved word, hence the quotes.
CREATE DATABASE "order" OWNER saga_order;
CREATE DATABASE inventory OWNER saga_inventory;
CREATE DATABASE payment OWNER saga_payment;
CREATE DATABASE orchestrator OWNER saga_orchestrator;
CREATE DATABASE query OWNER saga_query;
CREATE DATABASE registry OWNER saga_registry;

REVOKE CONNECT ON DATABASE "order", inventory, payment, orchestrator, query, registry FROM PUBLIC;
