"""Fault injection for the sandbox: the failures the WHMCS client must survive without double-billing.

Modes (what the server does with a request that draws the fault):
- "503": answers 503 at once; nothing is processed (the only 5xx a poster may retry).
- "500": answers 500 at once; nothing is processed (a read must be retried through it).
- "500_after_store": processes the action, then answers 500.
- "drop_after_store": processes the action, then closes the socket without any response:
  the crash after the item is stored but before the answer.
- "garbage_after_store": processes the action, then answers 200 with an HTML error page.
- "timeout": sleeps `delay` seconds (set it above the client's timeout) and only THEN processes
  the action, so the client's read timeout fires while the item is still about to be stored:
  the client must call it uncertain, and after `wait_idle()` the store holds exactly one item.
- "slow": sleeps `delay` seconds, then answers normally.

Rules are per action name (case-insensitive) or "*"; a rule fires with probability `error_rate`
from a seeded RNG, so a run is reproducible. `fail_next(n, mode)` queues deterministic faults,
which win over the rules.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from dataclasses import asdict, dataclass

MODES = ("503", "500", "500_after_store", "drop_after_store", "garbage_after_store", "timeout", "slow")
DEFAULT_DELAY = {"timeout": 5.0, "slow": 0.2}
AFTER_STORE = ("500_after_store", "drop_after_store", "garbage_after_store")


@dataclass(frozen=True)
class Fault:
    mode: str
    error_rate: float = 1.0
    delay: float = 0.0


def make_fault(mode: str, error_rate: float = 1.0, delay: float | None = None) -> Fault:
    if mode not in MODES:
        raise ValueError(f"unknown fault mode {mode!r} (known: {', '.join(MODES)})")
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError("error_rate must be within [0, 1]")
    return Fault(mode, float(error_rate), float(DEFAULT_DELAY.get(mode, 0.0) if delay is None else delay))


class Faults:
    """Thread-safe fault switchboard shared by the request handlers."""

    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._rules: dict[str, Fault] = {}
        self._queue: deque[tuple[str, Fault]] = deque()

    def set(
        self, action: str = "*", mode: str | None = None, error_rate: float = 1.0,
        delay: float | None = None, seed: int | None = None,
    ) -> None:
        """Install (or with mode=None remove) the rule for `action` ("*" = every action)."""
        key = action.lower()
        with self._lock:
            if seed is not None:
                self._rng = random.Random(seed)
            if mode is None:
                self._rules.pop(key, None)
            else:
                self._rules[key] = make_fault(mode, error_rate, delay)

    def fail_next(self, n: int, mode: str, action: str = "*", delay: float | None = None) -> None:
        fault = make_fault(mode, 1.0, delay)
        with self._lock:
            self._queue.extend((action.lower(), fault) for _ in range(int(n)))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._queue.clear()

    def draw(self, action: str) -> Fault | None:
        """The fault this request suffers, if any (consumes a queued one)."""
        key = action.lower()
        with self._lock:
            for i, (target, fault) in enumerate(self._queue):
                if target in ("*", key):
                    del self._queue[i]
                    return fault
            rule = self._rules.get(key) or self._rules.get("*")
            if rule is not None and self._rng.random() < rule.error_rate:
                return rule
        return None

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "rules": {k: asdict(v) for k, v in self._rules.items()},
                "queued": [{"action": a, **asdict(f)} for a, f in self._queue],
            }
