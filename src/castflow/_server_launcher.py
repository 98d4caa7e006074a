"""Runs Prefect's temporary server so that it dies with the castflow process that started it (Linux).

``python -m castflow._server_launcher <parent pid> <uvicorn arguments>``: asks the kernel for SIGTERM when
the parent dies (a SIGKILLed CLI would otherwise leave the server running under PID 1), then runs
uvicorn in this same process. Only the standard library is imported before that, so the signal is armed
within milliseconds of the fork. A launcher rather than ``preexec_fn``: that one runs Python between fork
and exec, which is unsafe once the parent has threads (Prefect starts some).
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def main(argv: list[str]) -> None:
    parent, uvicorn_args = int(argv[0]), argv[1:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGTERM), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    # prctl(2): a parent that died before the call sends no signal; the child has been reparented.
    if os.getppid() != parent:
        sys.exit(0)
    # uvicorn stops gracefully on SIGTERM (its lifespan shutdown runs, then it exits).
    sys.argv = ["uvicorn", *uvicorn_args]
    runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
