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
    from castflow.fakes import fal, supabase, wavespeed

    with _LOCK:
        if not _FAKES:
            atexit.register(_STACK.close)
        fal_fake = _start("fal", fal.FakeFal)
        ws_fake = _start("wavespeed", wavespeed.FakeWaveSpeed)
        sb_fake = _start("supabase", supabase.FakeSupabaseStorage)
    update = settings.model_copy(deep=True)
    update.storage.supabase.url = sb_fake.url
    update.storage.supabase.service_role_key = _secret(supabase.SERVICE_KEY)
    update.providers.fal_key = _secret(fal.VALID_KEY)
    update.providers.wavespeed_key = _secret(wavespeed.VALID_KEY)
    update.fal.queue_url = update.fal.rest_url = update.fal.cdn_url = fal_fake.url
    update.wavespeed.base_url = ws_fake.url
    update.wavespeed.poll_first_s = min(update.wavespeed.poll_first_s, 0.2)
    update.wavespeed.poll_cap_s = min(update.wavespeed.poll_cap_s, 1.0)
    update.wavespeed.expected_seconds_per_audio_second = 0.0  # the fakes render at once
    return update


def running_fakes() -> dict[str, Any]:
    """The fakes started in this process, by name (for tests and benchmarks: knobs and call counts)."""
    return dict(_FAKES)


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)
