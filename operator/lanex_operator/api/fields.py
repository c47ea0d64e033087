"""Field types shared by the spec and status models: Kubernetes quantities and timestamps.

A quantity is int-or-string in Kubernetes (`cpu: 2`, `storage: 100Gi`); the models keep it as
text and the CRD schema declares it the way Kubernetes' own types do.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainSerializer, WithJsonSchema
from pydantic_core import PydanticCustomError

from lanex_operator.api.quantity import QUANTITY_PATTERN, is_quantity, parse_quantity


def _int_to_text(value: Any) -> Any:
    # Kubernetes quantities are int-or-string ("cpu: 2"); keep them as text internally.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _check_quantity(value: str) -> str:
    if not is_quantity(value):
        raise PydanticCustomError(
            "quantity",
            "'{value}' is not a Kubernetes quantity (examples: 100Gi, 500M, 1.5Ti)",
            {"value": value},
        )
    return value


Quantity = Annotated[
    str,
    BeforeValidator(_int_to_text),
    AfterValidator(_check_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]


def _utc_text(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_positive(value: str) -> str:
    if parse_quantity(value) <= 0:
        raise PydanticCustomError("positive_quantity", "must be a positive quantity (got '{value}')", {"value": value})
    return value


PositiveQuantity = Annotated[Quantity, AfterValidator(_check_positive)]

# RFC 3339 in UTC with a Z, the way Kubernetes writes times.
Timestamp = Annotated[datetime, PlainSerializer(_utc_text, return_type=str, when_used="json")]
