-- What a result is. 'final': a complete count, delivered by sync / lis. 'incomplete': the
-- source ended before its declared end (a decode error, a truncated file, unreadable images)
-- and 'no-result': not one cell was counted. Neither is ever sent as it stands; reason says
-- why in words. Results written before this column are complete counts ('final').
ALTER TABLE results ADD COLUMN state TEXT NOT NULL DEFAULT 'final';
ALTER TABLE results ADD COLUMN reason TEXT;
