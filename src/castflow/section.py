"""The base of a settings group, shared by castflow's settings tree and each vendor's own group."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class Section(BaseModel):
    """A settings group. Validation errors never echo the input (it may be a key or a password)."""

    model_config = ConfigDict(hide_input_in_errors=True)


def clean_secret(value: SecretStr | None) -> SecretStr | None:
    """Keys pasted with surrounding spaces or a newline are trimmed; any other control character is
    refused (it would end up quoted, with the key, in an HTTP library's error message)."""
    if value is None:
        return None
    text = value.get_secret_value().strip()
    if not text:
        return None
    if any(ord(c) < 32 or ord(c) == 127 or c.isspace() for c in text):
        raise ValueError("contains spaces or control characters (value not shown)")
    return SecretStr(text)


class VendorSection(Section):
    """The settings group of a vendor, ``CASTFLOW_<VENDOR>__…``, declared in its folder
    (``castflow/providers/<vendor>/settings.py``, as ``GROUP``) and added to castflow's settings tree by
    its registration alone: its key, its prices, its models' limits and its account's concurrency live
    here, not in the tree's shared groups."""

    key: SecretStr | None = Field(default=None, description="API key (a secret: never logged or stored).")
    concurrency: int = Field(
        default=2,
        ge=1,
        description="Jobs in flight at once on this account (a new account's cap; raise it with the "
        "account's level). CASTFLOW_CAMPAIGN__PROVIDER_LIMITS overrides it.",
    )
    # Longest scene prompt per image-edit model and longest script per TTS model (characters), for the
    # vendor's models; CASTFLOW_PIPELINE__PROMPT_LIMITS / __SCRIPT_LIMITS override them per model.
    prompt_limits: dict[str, int] = Field(default_factory=dict)
    script_limits: dict[str, int] = Field(default_factory=dict)

    # Fields of this group that older releases read elsewhere, as (group, field) -> this group's field:
    # still read, with a FutureWarning naming the new variable. ``providers.<vendor>_key`` -> ``key`` holds
    # for every vendor and need not be listed.
    MOVED: ClassVar[Mapping[tuple[str, str], str]] = {}

    _key = field_validator("key")(clean_secret)

    def model_for(self, role: str) -> str | None:
        """The model this vendor plays ``role`` with (``image``: the scene prompt's limit follows it)."""
        return None
