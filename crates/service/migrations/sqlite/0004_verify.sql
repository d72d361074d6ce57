ALTER TABLE jobs ADD COLUMN verify_report TEXT;
