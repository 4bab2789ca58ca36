"""Autosuspend in the core: the pure rules (`rules.decide`), the planning of a cycle
(`planning`), and applying it through ports with its ledger transactions (`apply`)."""

from autobill.suspension.rules import (
    LOW_BALANCE_TEMPLATE,
    MANAGED_STATUSES,
    ZERO_BALANCE_TEMPLATE,
    Action,
    Decision,
    Policy,
    Snapshot,
    State,
    decide,
    resolve_threshold,
)

__all__ = [
    "LOW_BALANCE_TEMPLATE", "MANAGED_STATUSES", "ZERO_BALANCE_TEMPLATE", "Action", "Decision", "Policy", "Snapshot",
    "State", "decide", "resolve_threshold",
]
