"""How fast the WHMCS sandbox answers, through WhmcsClient over keep-alive.

Baseline (measured in the same run): the same GetClientsDetails requests sent with bare
`http.client` on one keep-alive connection, i.e. the server's own cost plus the minimum client
cost. The ratio shows what WhmcsClient (requests, retries, coercion) adds. Then one
autosuspend-shaped cycle for N clients: paginated GetInvoices(Unpaid) + GetClientsProducts,
and one GetClientsDetails per client, against the 20 s budget for 10 000 clients.

    .venv/bin/python benchmarks/whmcs_sandbox.py [--clients 10000]
"""

from __future__ import annotations

import argparse
import http.client
import time
from urllib.parse import urlencode

from connectors.whmcs import WhmcsClient
from sandboxes.whmcs import WhmcsSandbox

BUDGET_SECONDS = 20.0


def bare_http(sb: WhmcsSandbox, ids: list[int]) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", sb.port, timeout=30)
    t0 = time.perf_counter()
    for cid in ids:
        body = urlencode({"action": "GetClientsDetails", "identifier": "demo", "secret": "demo",
                          "responsetype": "json", "clientid": cid})
        conn.request("POST", "/includes/api.php", body, {"Content-Type": "application/x-www-form-urlencoded"})
        conn.getresponse().read()
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=10_000)
    args = parser.parse_args()
    with WhmcsSandbox() as sb:
        t0 = time.perf_counter()
        ids = sb.bulk_seed(args.clients)
        print(f"seed {args.clients} clients: {time.perf_counter() - t0:.2f} s")
        sample = ids[: min(3000, len(ids))]
        base = bare_http(sb, sample)
        with WhmcsClient(sb.url, "demo", "demo", custom_field_ids=sb.custom_field_ids) as c:
            c.get_clients_details(ids[0])
            t0 = time.perf_counter()
            for cid in sample:
                c.get_clients_details(cid)
            ours = time.perf_counter() - t0
            print(f"GetClientsDetails x{len(sample)}: bare http.client {len(sample) / base:.0f} req/s, "
                  f"WhmcsClient {len(sample) / ours:.0f} req/s (ratio {ours / base:.2f}x the baseline time)")
            t0 = time.perf_counter()
            unpaid = c.unpaid_balances()
            products = c.get_clients_products()
            t_pages = time.perf_counter() - t0
            for cid in ids:
                c.named_custom_fields(c.get_clients_details(cid)["client"])
            cycle = time.perf_counter() - t0
        print(f"cycle for {len(ids)} clients: {cycle:.2f} s (paginated lists {t_pages:.2f} s: "
              f"{len(unpaid)} clients with unpaid invoices, {len(products)} services); "
              f"budget {BUDGET_SECONDS:.0f} s -> {cycle / BUDGET_SECONDS:.0%} of budget")


if __name__ == "__main__":
    main()
