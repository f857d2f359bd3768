-- Step deadlines and blocked sagas. deadline_at_ms is when the awaited reply times out (NULL when
-- nothing is awaited on a deadline: ended, STUCK, PARKED); blocked_reason says why a saga is
-- STUCK or PARKED. Sagas in flight when this migration runs get a deadline 30 s after their last
-- change, so none waits forever.
ALTER TABLE sagas ADD COLUMN deadline_at_ms BIGINT;
ALTER TABLE sagas ADD COLUMN blocked_reason TEXT;
UPDATE sagas SET deadline_at_ms = updated_at_ms + 30000 WHERE status IN ('RUNNING', 'COMPENSATING');
CREATE INDEX IF NOT EXISTS sagas_by_deadline ON sagas (deadline_at_ms);
