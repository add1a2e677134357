"""Kubernetes resource quantities (128Mi, 1Gi, 500m, 2e3) as exact Decimals."""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation, localcontext

_RE = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))((?:[KMGTPE]i)|[numkMGTPE]|(?:[eE][+-]?[0-9]+))?$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1), "k": Decimal(10**3),
            "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12), "P": Decimal(10**15),
            "E": Decimal(10**18)}


MAX_DIGITS = 40  # far beyond anything Kubernetes stores; ceil() of 1e999999 would not finish


class QuantityError(ValueError):
    pass


def parse(value: str | int | float) -> Decimal:
    """The quantity's value; raises QuantityError for anything Kubernetes would reject."""
    if isinstance(value, bool):
        raise QuantityError(f"{value!r} is not a quantity")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(str(value))
    m = _RE.match(str(value).strip())
    if not m:
        raise QuantityError(f"{value!r} is not a quantity (examples: 128Mi, 1Gi, 500m, 2)")
    number, suffix = m.group(1), m.group(2) or ""
    with localcontext(prec=80):  # exact: the default 28 digits would round e.g. 13195369049Ei
        try:
            n = Decimal(number)
        except InvalidOperation as exc:
            raise QuantityError(f"{value!r} is not a quantity") from exc
        try:
            if suffix in _BINARY:
                result = n * _BINARY[suffix]
            elif suffix in _DECIMAL:
                result = n * _DECIMAL[suffix]
            else:
                result = n * Decimal(10) ** int(suffix[1:])
        except ArithmeticError as exc:
            raise QuantityError(f"{value!r} is too large for a quantity") from exc
    if result and result.adjusted() > MAX_DIGITS:
        raise QuantityError(f"{value!r} is too large for a quantity")
    return result


def is_quantity(value: object) -> bool:
    try:
        parse(value)  # type: ignore[arg-type]
    except QuantityError:
        return False
    return True


def to_bytes(value: str | int) -> int:
    with localcontext(prec=80):
        return math.ceil(parse(value))


def to_millicores(value: str | int) -> int:
    return math.ceil(parse(value) * 1000)


def format_bytes(n: int) -> str:
    """Shortest exact binary form: 134217728 -> 128Mi."""
    for suffix, factor in reversed(_BINARY.items()):
        if n and n % factor == 0:
            return f"{n // factor}{suffix}"
    return str(n)
