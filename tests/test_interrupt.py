"""Ctrl-C at the very end of a process: the exit status is the process's own, never death by SIGINT."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

# A process whose interpreter teardown takes a while (a module global's finaliser), as a CLI's does
# after a campaign: Python has reset its signal handlers to the default by then.
PROGRAM = """
import os, signal, sys, time
if sys.argv[1] == "guarded":
    from castflow import interrupt
    interrupt.ignore_at_the_very_end()
signal.signal(signal.SIGINT, lambda *_: os._exit(130))  # as interrupt.handling_signals' second Ctrl-C
class SlowTeardown:
    def __del__(self):
        time.sleep(1.5)
keep = SlowTeardown()
print("exiting", flush=True)
sys.exit(0)
"""


@pytest.mark.parametrize(("mode", "status"), [("unguarded", -signal.SIGINT), ("guarded", 0)])
def test_a_ctrl_c_during_interpreter_teardown(mode: str, status: int) -> None:
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM, mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "exiting"
    time.sleep(0.7)  # inside the finaliser's sleep: past the exit handlers
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == status
