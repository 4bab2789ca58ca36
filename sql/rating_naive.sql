-- rating_naive: the NAIVE baseline rater of benchmarks/rating.py; the product does not use it.
-- Inputs (substituted by the benchmark): {tariff} and {cdrs} parquet paths (RATING.md columns;
-- tariff columns as text, CDR billsec as an integer), {lengths} = the tariff's distinct prefix
-- lengths. Country code 1 defaults, markup 0.
-- Output: one row per CDR in input order: cdr_id, status, e164, matched_prefix,
-- billable_seconds, rate, connect_fee, cost (text, 6 decimals), like `autobill rate`.
-- Method: expand every number into its prefixes of every tariff length, join them all to the
-- tariff, keep the longest prefix in effect (latest effective_from): simple, and heavy.
WITH t AS (
    SELECT
        prefix,
        description,
        CAST(CAST(rate AS DECIMAL(38, 6)) * 1000000 AS HUGEINT) AS rate_micro,
        CAST(CAST(COALESCE(NULLIF(connect_fee, ''), '0') AS DECIMAL(38, 6)) * 1000000 AS HUGEINT) AS fee_micro,
        CAST(COALESCE(NULLIF(first_increment, ''), '1') AS BIGINT) AS fi,
        CAST(COALESCE(NULLIF(next_increment, ''), NULLIF(first_increment, ''), '1') AS BIGINT) AS ni,
        CAST(NULLIF(effective_from, '') AS TIMESTAMPTZ) AS eff
    FROM read_parquet('{tariff}')
),
c AS (
    SELECT
        row_number() OVER () AS rn,
        cdr_id,
        billsec,
        TRY_CAST(start AS TIMESTAMPTZ) AS ts,
        regexp_replace(dst, '[^0-9]', '', 'g') AS digits,
        starts_with(ltrim(dst), '+') AS plus
    FROM read_parquet('{cdrs}')
),
n AS (
    SELECT
        *,
        row_number() OVER (PARTITION BY cdr_id ORDER BY rn) > 1 AS dup,
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
expanded AS (
    SELECT numbers.rn, numbers.ts, l.len, substr(numbers.e164, 1, l.len) AS p
    FROM numbers, (SELECT unnest([{lengths}]) AS len) AS l
    WHERE numbers.e164 IS NOT NULL AND numbers.ts IS NOT NULL AND length(numbers.e164) >= l.len
),
best AS (
    SELECT expanded.rn, t.*
    FROM expanded
    JOIN t ON t.prefix = expanded.p
    WHERE t.eff IS NULL OR t.eff <= expanded.ts
    QUALIFY row_number() OVER (PARTITION BY expanded.rn ORDER BY expanded.len DESC, t.eff DESC NULLS LAST) = 1
),
rated AS (
    SELECT
        numbers.rn,
        numbers.cdr_id,
        CASE
            WHEN numbers.dup THEN 'duplicate'
            WHEN numbers.ts IS NULL OR numbers.billsec IS NULL OR numbers.billsec < 0 THEN 'invalid'
            WHEN numbers.e164 IS NULL THEN 'invalid_number'
            WHEN numbers.billsec = 0 THEN 'unanswered'
            WHEN best.prefix IS NULL THEN 'no_rate'
            ELSE 'rated'
        END AS status,
        numbers.e164,
        best.prefix AS matched_prefix,
        best.description,
        CASE
            WHEN numbers.billsec = 0 THEN 0
            WHEN best.prefix IS NULL OR numbers.billsec < 0 THEN NULL
            WHEN numbers.billsec <= best.fi THEN best.fi
            ELSE best.fi + ((numbers.billsec - best.fi + best.ni - 1) // best.ni) * best.ni
        END AS b,
        best.rate_micro,
        best.fee_micro
    FROM numbers
    LEFT JOIN best ON best.rn = numbers.rn
)
SELECT
    cdr_id,
    status,
    e164,
    matched_prefix,
    description,
    b AS billable_seconds,
    printf('%d.%06d', rate_micro // 1000000, rate_micro % 1000000) AS rate,
    printf('%d.%06d', fee_micro // 1000000, fee_micro % 1000000) AS connect_fee,
    CASE
        WHEN status = 'unanswered' THEN '0.000000'
        WHEN status = 'rated' THEN printf(
            '%d.%06d',
            ((2 * (fee_micro * 60 + rate_micro * b) + 60) // 120) // 1000000,
            ((2 * (fee_micro * 60 + rate_micro * b) + 60) // 120) % 1000000
        )
    END AS cost
FROM rated
ORDER BY rn
