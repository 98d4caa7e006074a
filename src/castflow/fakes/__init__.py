"""Loopback fakes of the paid providers, speaking their real protocols.

:func:`serve_fakes` starts them inside the current process (once) and returns settings pointed at them;
``CASTFLOW_PROVIDERS__FAKES=true`` makes the runtime do that, so a whole campaign can run on fal,
WaveSpeed and Supabase code paths without keys or network.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from typing import Any

from castflow.settings import Settings

_STACK = contextlib.ExitStack()
_FAKES: dict[str, Any] = {}
_LOCK = threading.Lock()


def _start(name: str, factory: Any) -> Any:
    if name not in _FAKES:
        fake = factory()
        _STACK.enter_context(fake.running())
        _FAKES[name] = fake
    return _FAKES[name]


def serve_fakes(settings: Settings) -> Settings:
    """Start the fakes the settings need (once per process); return settings that point at them."""
    from castflow.providers.vendors import vendors
    from castflow.storage.supabase import fake as supabase

    with _LOCK:
        if not _FAKES:
            atexit.register(_STACK.close)
        started = [(vendor, _start(vendor.NAME, vendor.start_fake)) for vendor in vendors()]
        sb_fake = _start("supabase", supabase.FakeSupabaseStorage)
    update = settings.model_copy(deep=True)
    update.storage.supabase.url = sb_fake.url
    update.storage.supabase.service_role_key = _secret(supabase.SERVICE_KEY)
    for vendor, fake in started:
        vendor.use_fake(update, fake)
    return update


def running_fakes() -> dict[str, Any]:
    """The fakes started in this process, by name (for tests and benchmarks: knobs and call counts)."""
    return dict(_FAKES)


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)
