"""Money as an integer count of nano-USD (1e-9 USD).

Every stored, summed or sent amount is an ``int`` of nanos. Decimal appears only at the
edges (parsing user input, printing), and float never appears in a money path.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation, localcontext

NANOS_PER_USD = 1_000_000_000
# Largest amount we accept anywhere: one billion USD. A limit keeps a typo from turning
# into a 30-digit integer that every sum then carries, and its nanos (1e18) fit the signed
# 64-bit integers the store and the replay hold them in (DuckDB BIGINT, Arrow int64).
MAX_USD = Decimal(1_000_000_000)
MAX_NANOS = int(MAX_USD) * NANOS_PER_USD
assert MAX_NANOS < 2**63


class MoneyError(ValueError):
    """An amount that cannot be represented exactly as nano-USD."""


def usd_to_nanos(amount_usd: Decimal | int | str, *, exact: bool = False) -> int:
    """Convert a USD amount to nanos, rounding half-to-even to the nearest nano.

    With ``exact=True`` an amount finer than one nano is an error instead of rounded,
    which is what configuration (budgets) wants: a limit must mean what it says.
    """
    if isinstance(amount_usd, bool):
        raise MoneyError("a boolean is not an amount")
    try:
        value = Decimal(amount_usd)
    except (InvalidOperation, ValueError) as exc:
        raise MoneyError(f"not a decimal amount: {amount_usd!r}") from exc
    if not value.is_finite():
        raise MoneyError(f"amount must be finite, got {amount_usd!r}")
    if abs(value) > MAX_USD:
        raise MoneyError(f"amount {value} USD exceeds the limit of {MAX_USD} USD")
    with localcontext() as ctx:
        ctx.prec = 60
        scaled = value * NANOS_PER_USD
        nanos = scaled.quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    if exact and nanos != scaled:
        raise MoneyError(f"amount {value} USD is finer than one nano-USD (1e-9)")
    return int(nanos)


def nanos_to_usd(nanos: int) -> Decimal:
    """Exact Decimal USD for an integer count of nanos."""
    if isinstance(nanos, bool) or not isinstance(nanos, int):
        raise MoneyError(f"nanos must be an int, got {type(nanos).__name__}")
    with localcontext() as ctx:
        ctx.prec = 60
        return Decimal(nanos).scaleb(-9)


def format_usd(nanos: int) -> str:
    """Plain decimal USD text with no exponent and no trailing zeros: ``0.000000001``."""
    text = format(nanos_to_usd(nanos), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def round_half_even_div(numerator: int, denominator: int) -> int:
    """Integer division rounded half-to-even, for exact rational amounts."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


def allocate_rounded(parts: list[int], denominator: int) -> list[int]:
    """Round each exact part ``parts[i] / denominator`` so the results sum to the
    rounded total (largest-remainder method), so a breakdown always adds up to its total.
    """
    total = round_half_even_div(sum(parts), denominator)
    floors = [part // denominator for part in parts]
    shortfall = total - sum(floors)
    if shortfall == 0:
        return floors
    order = sorted(range(len(parts)), key=lambda i: (-(parts[i] % denominator), i))
    # 0 <= shortfall <= len(parts): each part loses less than one unit to its floor.
    assert 0 <= shortfall <= len(parts), "rounded total outside the floors' reach"
    result = list(floors)
    for i in order[:shortfall]:
        result[i] += 1
    return result
