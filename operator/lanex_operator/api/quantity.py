"""Kubernetes resource quantities ("100Gi", "500M", "1.5e9"): one regex and one parser.

The regex goes into the CRD schema, the parser lets the builders compare sizes (a restored
PVC must be at least its snapshot's restoreSize), so both read a quantity the same way.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# The grammar of k8s.io/apimachinery resource.Quantity: a signed decimal number followed by an
# optional binary suffix (Ki..Ei), decimal suffix (n, u, m, k, M..E) or decimal exponent.
QUANTITY_PATTERN = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]+))?$"

_QUANTITY = re.compile(QUANTITY_PATTERN)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


class QuantityError(ValueError):
    """A string that is not a Kubernetes quantity."""


def is_quantity(text: str) -> bool:
    """True when `text` follows the Kubernetes quantity grammar."""
    return bool(_QUANTITY.fullmatch(text))


def parse_quantity(text: str) -> Decimal:
    """The value of a quantity in base units (bytes for storage): "1Gi" -> 1073741824."""
    match = _QUANTITY.fullmatch(text)
    if not match:
        raise QuantityError(f"{text!r} is not a Kubernetes quantity (examples: 100Gi, 500M, 1.5Ti)")
    number = Decimal(match.group(1)) * (-1 if text.startswith("-") else 1)
    suffix = match.group(3) or ""
    try:
        if suffix in _BINARY:
            return number * _BINARY[suffix]
        if suffix in _DECIMAL:
            return number * _DECIMAL[suffix]
        return number * (Decimal(10) ** int(suffix[1:]))
    except (InvalidOperation, ValueError) as error:  # absurd exponents
        raise QuantityError(f"{text!r} is out of range for a Kubernetes quantity") from error


def max_quantity(first: str, second: str) -> str:
    """The larger of two quantities, returned as written (used for restore sizes)."""
    return first if parse_quantity(first) >= parse_quantity(second) else second
