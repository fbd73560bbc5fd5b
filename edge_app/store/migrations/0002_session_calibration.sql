-- The per-device calibration a session was counted with (JSON: [model] box_scale,
-- [capture] flat_field and its sha256), so a result can be traced to the settings
-- that shaped its boxes and colours. NULL for sessions counted before this column.
ALTER TABLE sessions ADD COLUMN calibration TEXT;
