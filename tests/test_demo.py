"""The README's main job, as a user runs it: `castflow demo` in a fresh folder, no keys, no servers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from castflow import media


def test_demo_renders_the_sample_videos_quietly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CASTFLOW_"))}
    cmd = [sys.executable, "-m", "castflow", "demo"]
    done = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    out_lines = done.stdout.strip().splitlines()
    ok_lines = [line for line in out_lines if line.startswith("ok ")]
    assert len(ok_lines) == 3, done.stdout
    # Clean output: no tracebacks, no lock errors, no Prefect server chatter.
    for noise in ("Traceback", "database is locked", "ERROR", "Starting temporary server"):
        assert noise not in done.stdout + done.stderr
    for line in ok_lines:
        url = re.search(r"file://\S+\.mp4", line)
        assert url is not None, line
        path = Path(url.group(0).removeprefix("file://"))
        assert path.is_file()
        assert path.is_relative_to(tmp_path / ".castflow" / "storage" / "videos")
        info = media.probe(path)
        assert info.has_video
        assert info.has_audio
        assert info.duration > 2.0
    assert f"videos are in {tmp_path / '.castflow' / 'storage'} under videos/" in done.stdout
    # The first video wears the sample brand kit: a TikTok output that meets its profile.
    (tiktok,) = [line for line in out_lines if line.strip().startswith("tiktok ")]
    found = re.search(r"file://\S+_tiktok\.mp4", tiktok)
    assert found is not None, tiktok
    info = media.probe(Path(found.group(0).removeprefix("file://")))
    assert (info.width, info.height) == (1080, 1920)
