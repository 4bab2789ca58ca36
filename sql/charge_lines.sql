-- charge_lines: one charge line per client / service / billing date / class / currency / tariff version.
--
-- input  `rated`  one row per CDR that reached outcome 'billed' this run, with
--                 client_id, service_id, billing_date (local date), charge_class, currency,
--                 tariff_version, cost (decimal text, 6 places, already rounded once per call),
--                 charged_seconds, cdr_key
-- output  client_id, service_id, billing_date, charge_class, currency, tariff_version,
--         exact_amount DECIMAL(38,6)  exact sum of the per-call costs (rounded later, once, to the
--                                     currency's minor unit),
--         charged_seconds, cdr_count,
--         keys_digest                 the first 16 hex digits of the SHA-256 of the line's cdr_keys,
--                                     sorted (binary order, as Python sorts str) and joined by
--                                     newlines: the content the idempotency key is derived from
--                                     (autobill/ledger/charges.py idempotency_key; the keys stay in
--                                     DuckDB instead of coming back as Python lists)
select
    client_id,
    service_id,
    billing_date,
    charge_class,
    currency,
    tariff_version,
    sum(cast(cost as decimal(38, 6))) as exact_amount,
    sum(charged_seconds) as charged_seconds,
    count(*) as cdr_count,
    left(sha256(string_agg(cdr_key, chr(10) order by cdr_key)), 16) as keys_digest
from rated
group by all
order by client_id, service_id, billing_date, charge_class, currency, tariff_version
