"""Charts for the run report, as PNG data URIs a markdown artifact can embed (matplotlib, Agg).

Why PNG in a data URI: the Prefect UI renders an artifact's markdown itself and offers no file
hosting; an inline image is the one thing it shows without any extra server (checked in
headless Chromium by tests/ui/test_run_page.py). Charts are drawn 860 px wide so they fit the
artifact pane of a 1280 px screen.

Amounts are turned into floats here ONLY to place pixels; every figure printed next to a chart
comes from the exact Decimal values.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import matplotlib

matplotlib.use("Agg")  # no display, no GUI toolkit: safe in a worker
import matplotlib.pyplot as plt  # noqa: E402

WIDTH_IN, DPI = 8.6, 100
COLOURS = ("#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626")


@dataclass(frozen=True)
class Night:
    billing_date: date
    calls: int  # CDRs read (extracted + carried in)
    billed: int  # calls billed
    amounts: dict[str, Decimal]  # charge lines created, per currency
    minutes: float | None  # run duration; None when unknown
    status: str = "completed"


@dataclass(frozen=True)
class ServerVolume:
    server: str
    tonight: float  # rows per hour of window, or rows per batch (see unit)
    usual: float | None  # median of the history; None: not enough history
    unit: str
    status: str  # ok | drop | skipped


def data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def nightly_trend(nights: list[Night], budget_minutes: int) -> str | None:
    """Calls, amount per currency and run minutes against the budget, one point per night
    (oldest left). None when there is no night to draw."""
    if not nights:
        return None
    nights = sorted(nights, key=lambda n: n.billing_date)
    xs = list(range(len(nights)))
    labels = [n.billing_date.strftime("%m-%d") for n in nights]
    fig, (ax_calls, ax_amount, ax_minutes) = plt.subplots(3, 1, sharex=True, figsize=(WIDTH_IN, 6.0))
    ax_calls.bar(xs, [n.calls for n in nights], color="#93c5fd", label="calls read")
    ax_calls.plot(xs, [n.billed for n in nights], color=COLOURS[0], marker="o", ms=3, label="calls billed")
    ax_calls.set_ylabel("calls")
    ax_calls.legend(loc="upper left", fontsize=8, frameon=False)
    currencies = sorted({c for n in nights for c in n.amounts})
    for i, ccy in enumerate(currencies):
        # A chart coordinate, not money arithmetic: the exact amounts are in the summary table.
        ax_amount.plot(xs, [float(n.amounts.get(ccy, Decimal(0))) for n in nights], marker="o", ms=3,
                       color=COLOURS[(i + 1) % len(COLOURS)], label=ccy)
    if currencies:
        ax_amount.legend(loc="upper left", fontsize=8, frameon=False)
    ax_amount.set_ylabel("amount billed")
    minutes = [n.minutes or 0.0 for n in nights]
    colours = ["#dc2626" if m > budget_minutes else "#f59e0b" if m > 0.8 * budget_minutes else "#86efac"
               for m in minutes]
    ax_minutes.bar(xs, minutes, color=colours)
    ax_minutes.axhline(budget_minutes, color="#dc2626", linestyle="--", linewidth=1)
    ax_minutes.text(xs[-1] + 0.4, budget_minutes, f"WHMCS cron budget {budget_minutes} min", color="#dc2626",
                    fontsize=8, va="bottom", ha="right")
    ax_minutes.set_ylabel("run minutes")
    ax_minutes.set_ylim(0, max(budget_minutes * 1.15, max(minutes) * 1.1))
    step = max(1, len(xs) // 15)
    ax_minutes.set_xticks(xs[::step], labels[::step], fontsize=8)
    for ax in (ax_calls, ax_amount, ax_minutes):
        ax.spines[["top", "right"]].set_visible(False)
        ax.tick_params(labelsize=8)
    fig.suptitle(f"Last {len(nights)} nights", fontsize=10)
    return data_uri(fig)


def server_volumes(volumes: list[ServerVolume]) -> str | None:
    """Each server's volume tonight against its usual (median) volume, as horizontal bars."""
    if not volumes:
        return None
    volumes = sorted(volumes, key=lambda v: v.server)
    ys = list(range(len(volumes)))
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 0.45 * len(volumes) + 1.0))
    colour = {"drop": "#dc2626", "ok": "#16a34a", "skipped": "#9ca3af"}
    ax.barh(ys, [v.tonight for v in volumes], color=[colour.get(v.status, "#9ca3af") for v in volumes],
            height=0.6, label="tonight")
    usual = [(y, v.usual) for y, v in zip(ys, volumes, strict=True) if v.usual is not None]
    if usual:
        ax.scatter([u for _, u in usual], [y for y, _ in usual], marker="|", s=400, color="#111827",
                   label="usual (median)", zorder=3)
    ax.set_yticks(ys, [f"{v.server} ({v.unit})" for v in volumes], fontsize=8)
    ax.invert_yaxis()
    ax.tick_params(labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.set_title("Volume per server: tonight (bar; red = drop) vs usual (black mark)", fontsize=10)
    return data_uri(fig)
