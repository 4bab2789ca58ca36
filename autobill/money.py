"""Exact money. Binary floats never carry an amount (DESIGN.md invariant 3).

The rounding rule, stated once:
- a call's cost is computed exactly and rounded once to 6 decimals, half-up (`round_cost`);
- a charge line (one client / service / billing date / class) is the exact sum of its calls'
  rounded costs, rounded once to the currency's minor unit, half-up (`round_minor`).
Nothing is ever rounded per billing increment.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

COST_PLACES = 6
COST_QUANT = Decimal(1).scaleb(-COST_PLACES)

# ISO 4217 minor units for the currencies that do not use 2 decimals.
_MINOR_UNITS = {"JPY": 0, "KRW": 0, "CLP": 0, "ISK": 0, "VND": 0, "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3, "TND": 3}


class MoneyError(ValueError):
    pass


def minor_units(currency: str) -> int:
    return _MINOR_UNITS.get(currency.upper(), 2)


def to_decimal(value: str | int | Decimal) -> Decimal:
    """Parse an amount from text or an integer; floats are refused on purpose."""
    if isinstance(value, float):  # pragma: no cover - guarded by type hints, kept as a tripwire
        raise MoneyError("refusing a binary float as money; pass a decimal string")
    try:
        result = Decimal(value) if not isinstance(value, Decimal) else value
    except (InvalidOperation, TypeError) as exc:
        raise MoneyError(f"not a decimal amount: {value!r}") from exc
    if not result.is_finite():
        raise MoneyError(f"not a finite amount: {value!r}")
    return result


def round_cost(value: Decimal) -> Decimal:
    """A call's cost: 6 decimals, half-up."""
    return value.quantize(COST_QUANT, rounding=ROUND_HALF_UP)


def round_minor(value: Decimal, currency: str) -> Decimal:
    """A charge line's amount: the currency's minor unit, half-up."""
    return value.quantize(Decimal(1).scaleb(-minor_units(currency)), rounding=ROUND_HALF_UP)


def format_cost(value: Decimal | None) -> str:
    """Exactly 6 decimals, or empty for no cost (RATING.md output)."""
    return "" if value is None else f"{round_cost(value):.6f}"


def format_money(value: Decimal | int | str, currency: str) -> str:
    """An amount for people: `354.00 USD`. At least the currency's minor unit, never fewer digits
    than the exact value has (`0.300001 USD` stays exact: nothing is rounded for display)."""
    amount = to_decimal(value)
    places = max(minor_units(currency), -amount.normalize().as_tuple().exponent)
    return f"{amount:.{places}f} {currency.upper()}"


def format_amounts(amounts: dict[str, Decimal] | dict[str, str], empty: str = "nothing") -> str:
    """Amounts per currency, `354.00 USD, 12.50 CAD` (sorted by currency), or `empty`."""
    return ", ".join(format_money(v, c) for c, v in sorted(amounts.items())) or empty
