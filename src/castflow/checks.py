"""A health check's finding (``castflow doctor``): what was looked at, at what level, and what was found."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import httpx

Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    detail: str


def http(
    method: str, url: str, *, headers: dict[str, str], json: object = None, timeout: float = 10.0
) -> httpx.Response:
    """One request of a check (a free, authenticated call)."""
    with httpx.Client(timeout=timeout) as client:
        return client.request(method, url, headers=headers, json=json)
