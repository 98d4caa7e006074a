"""The deployments' forms: one field per option, each a plain type with a default (no nested box, no
"None" toggle).

The Prefect UI draws a string parameter as a text area (a sheet can be pasted in), a bool as a toggle, a
Literal as a dropdown. Prefect builds the form's schema from the flow's signature: a field's help is the
flow docstring's ``Args:`` entry, its constraints come from ``Annotated[type, Field(...)]`` (enforced when
the flow validates its parameters), and its label is the JSON-schema title, which Prefect sets to the
parameter's name unless the ``Field`` merges another in (:func:`label`). A ``Field`` given as a default
would not do: Prefect passes it on to the flow as the value.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field


def label(title: str, **constraints: Any) -> Any:
    """A parameter's ``Annotated`` metadata: its label in the form and its constraints."""
    return Field(json_schema_extra={"title": title}, **constraints)
