-- The process that wrote a row and hands it to its relay in memory; NULL for rows written by
-- another program (sagactl), which every relay looks for in the table.
ALTER TABLE outbox ADD COLUMN owner TEXT;
