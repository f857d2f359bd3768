-- The W3C trace context (traceparent) of the span that started the saga and of each transition:
-- a step run later (after a restart, a retry or a redrive) can join the saga's trace, and
-- operators can jump from a saga to its trace.
ALTER TABLE sagas ADD COLUMN trace_parent TEXT;
ALTER TABLE saga_log ADD COLUMN trace_parent TEXT;
