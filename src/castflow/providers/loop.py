"""One event loop for every provider call of the process, on a daemon thread.

Stages run in worker threads (one per row); their provider calls are coroutines. Running each on a
fresh ``asyncio.run`` loop would build a loop and an HTTP client per call and never reuse a connection;
here they all share one loop, whose pooled clients keep connections alive. Coroutines on it must not
block: CPU work (decoding, probing) happens in the calling thread after :func:`run_sync` returns.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def _running_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="castflow-providers", daemon=True)
            thread.start()
            _loop = loop
        return _loop


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the providers' loop and wait for its result in this thread."""
    return asyncio.run_coroutine_threadsafe(coro, _running_loop()).result()
