-- known_keys_sqlite: which of a batch's CDR keys the ledger already knows, and in what state
-- (data_quality/known.py; the sqlite twin of known_keys_postgresql.sql).
-- Inputs (bound by name):
--          keys: a JSON array of distinct CDR keys (one parameter, unpacked server-side)
--          quarantine: 1 to include quarantined keys, 0 not to
--          requeued: 1 to count quarantine rows already requeued, 0 not to
-- Output:  (cdr_key, state) with state billed | unrated | quarantine:<status>; a key may appear
--          in several tables (the caller keeps the highest-priority state).
-- The ledger tables are joined on their key indexes and never read whole (they grow forever).
-- billed_cdrs holds only LEGACY rows (before migration 0010); the billed manifests in the lake
-- are probed by the caller (autobill/ledger/billed.py).
WITH k AS MATERIALIZED (SELECT value AS cdr_key FROM json_each(:keys))
SELECT k.cdr_key, 'billed' FROM k JOIN billed_cdrs b ON b.cdr_key = k.cdr_key
UNION ALL
SELECT k.cdr_key, 'unrated' FROM k JOIN unrated_cdrs u ON u.cdr_key = k.cdr_key
UNION ALL
SELECT k.cdr_key, 'quarantine:' || q.status FROM k JOIN quarantine q ON q.cdr_key = k.cdr_key
WHERE :quarantine = 1 AND (q.status IN ('held', 'released') OR (:requeued = 1 AND q.status = 'requeued'))
