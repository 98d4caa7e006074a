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
    # Every caption style (bold, karaoke, clean: each video has its .ass), and the first video in the
    # sample brand kit as two export profiles, each meeting its profile (loudness included).
    styles = []
    for line in ok_lines:
        path = Path(re.search(r"file://(\S+)\.mp4", line).group(1))  # type: ignore[union-attr]
        ass = path.with_suffix(".ass").read_text(encoding="utf-8")
        styles.append(re.search(r"^Style: (\w+),", ass, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert styles == ["bold", "karaoke", "clean"]
    from castflow import finish

    for name, size in (("tiktok", (1080, 1920)), ("square", (1080, 1080))):
        (line,) = [line for line in out_lines if line.strip().startswith(f"{name} ")]
        found = re.search(rf"file://(\S+_{name}\.mp4)", line)
        assert found is not None, line
        output = Path(found.group(1))
        assert finish.read_streams(output).width == size[0]
        seconds = media.probe(output).duration
        assert finish.check(output, finish.PROFILES[name], audio_seconds=seconds) == []
    # Run again: everything is reused, nothing is encoded again.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / ".castflow" / "storage").rglob("*.mp4")}
    again = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert again.returncode == 0, again.stderr
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / ".castflow" / "storage").rglob("*.mp4")}
    assert after == before
