-- rating_naive: the NAIVE baseline rater of benchmarks/rating.py; the product does not use it.
-- Inputs (substituted by the benchmark): {tariff} and {cdrs} parquet paths (RATING.md columns;
-- tariff columns as text, CDR billsec as an integer), {lengths} = the tariff's distinct prefix
-- lengths. Country code 1 defaults, markup 0.
-- Output: what `autobill rate` writes to parquet, in input order: every input column, then
-- status, e164, matched_prefix, description, billable_seconds (BIGINT), rate, connect_fee, cost
-- (DECIMAL(18,6), exact: integer micro-units, rounded once half-up).
-- Method, the SQL a user would write in an afternoon: digits-only normalisation (a plain
-- `+digits` / `digits` number skips the regular expression), expand every number into its
-- prefixes of every tariff length, join them all to the tariff, keep the longest prefix in
-- effect (latest effective_from) with arg_max. Simple, and heavy. Tuned so that the baseline is
-- not a straw man: file_row_number instead of a window for the order, arg_max instead of
-- QUALIFY row_number(), no text formatting of money.
WITH t AS (
    SELECT
        row_number() OVER () AS tid,
        prefix,
        description,
        CAST(CAST(rate AS DECIMAL(38, 6)) * 1000000 AS BIGINT) AS rate_micro,
        CAST(CAST(COALESCE(NULLIF(connect_fee, ''), '0') AS DECIMAL(38, 6)) * 1000000 AS BIGINT) AS fee_micro,
        CAST(COALESCE(NULLIF(first_increment, ''), '1') AS BIGINT) AS fi,
        CAST(COALESCE(NULLIF(next_increment, ''), NULLIF(first_increment, ''), '1') AS BIGINT) AS ni,
        CAST(NULLIF(effective_from, '') AS TIMESTAMPTZ) AS eff
    FROM read_parquet('{tariff}')
),
c AS (
    SELECT
        *,
        TRY_CAST(start AS TIMESTAMPTZ) AS ts,
        CASE
            WHEN TRY_CAST(dst AS UBIGINT) IS NOT NULL THEN ltrim(dst, '+')
            ELSE regexp_replace(dst, '[^0-9]', '', 'g')
        END AS digits,
        starts_with(dst, '+') AS plus
    FROM read_parquet('{cdrs}', file_row_number = true)
),
n AS (
    SELECT
        *,
        CASE
            WHEN plus THEN digits
            WHEN starts_with(digits, '011') THEN substr(digits, 4)
            WHEN length(digits) = 10 AND substr(digits, 1, 1) BETWEEN '2' AND '9' THEN '1' || digits
            ELSE digits
        END AS e
    FROM c
),
numbers AS (
    SELECT *, CASE WHEN length(e) BETWEEN 1 AND 15 THEN e END AS e164 FROM n
),
best AS (
    SELECT x.file_row_number AS rn, arg_max(t.tid, x.len * 10000000000000 + coalesce(epoch_ms(t.eff), 0)) AS tid
    FROM (
        SELECT file_row_number, ts, l.len, substr(e164, 1, l.len) AS p
        FROM numbers, (SELECT unnest([{lengths}]) AS len) AS l
        WHERE e164 IS NOT NULL AND ts IS NOT NULL AND length(e164) >= l.len
    ) AS x
    JOIN t ON t.prefix = x.p
    WHERE t.eff IS NULL OR t.eff <= x.ts
    GROUP BY x.file_row_number
),
dups AS (
    SELECT file_row_number AS rn
    FROM (SELECT file_row_number, row_number() OVER (PARTITION BY cdr_id ORDER BY file_row_number) AS k FROM c)
    WHERE k > 1
),
rated AS (
    SELECT
        numbers.*,
        t.prefix AS matched_prefix_,
        t.description AS description_,
        t.rate_micro,
        t.fee_micro,
        CASE
            WHEN dups.rn IS NOT NULL THEN 'duplicate'
            WHEN numbers.ts IS NULL OR billsec IS NULL OR billsec < 0 OR billsec > 604800 THEN 'invalid'
            WHEN e164 IS NULL THEN 'invalid_number'
            WHEN billsec = 0 THEN 'unanswered'
            WHEN t.prefix IS NULL THEN 'no_rate'
            ELSE 'rated'
        END AS status,
        CASE
            WHEN billsec = 0 THEN 0
            WHEN t.prefix IS NULL OR billsec < 0 THEN NULL
            WHEN billsec <= t.fi THEN t.fi
            ELSE t.fi + ((billsec - t.fi + t.ni - 1) // t.ni) * t.ni
        END AS b
    FROM numbers
    LEFT JOIN best ON best.rn = numbers.file_row_number
    LEFT JOIN t ON t.tid = best.tid
    LEFT JOIN dups ON dups.rn = numbers.file_row_number
)
SELECT
    * EXCLUDE (file_row_number, ts, digits, plus, e, e164, matched_prefix_, description_, rate_micro, fee_micro, status, b),
    status,
    e164,
    matched_prefix_ AS matched_prefix,
    description_ AS description,
    b AS billable_seconds,
    CAST(rate_micro AS DECIMAL(18, 0)) * CAST(0.000001 AS DECIMAL(7, 6)) AS rate,
    CAST(fee_micro AS DECIMAL(18, 0)) * CAST(0.000001 AS DECIMAL(7, 6)) AS connect_fee,
    CASE
        WHEN status = 'unanswered' THEN CAST(0 AS DECIMAL(18, 6))
        WHEN status = 'rated'
            THEN CAST((2 * (fee_micro * 60 + rate_micro * b) + 60) // 120 AS DECIMAL(18, 0)) * CAST(0.000001 AS DECIMAL(7, 6))
    END AS cost
FROM rated
ORDER BY file_row_number
