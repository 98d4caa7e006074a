"""The base of a settings group, shared by castflow's settings tree and each vendor's own group."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, SecretStr


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
