"""The sweep-inbox flow: each new sheet runs exactly once (by content), invalid ones are moved aside
with their errors and never retried."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from castflow.actors import ensure_sample_actors
from castflow.db.tables import Campaign
from castflow.runtime import Runtime

pytestmark = pytest.mark.flow


def test_sheets_run_once_and_bad_ones_are_moved_aside(
    rt: Runtime, tmp_path: Path, prefect_server: None
) -> None:
    from flows.sweep_inbox import sweep_inbox

    ensure_sample_actors(rt)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    good = "actor,script\nmaya,Inbox sheets run by themselves.\n"
    (inbox / "weekly.csv").write_text(good, encoding="utf-8")
    (inbox / "broken.csv").write_text("actor,script\nnobody,Who?\n", encoding="utf-8")
    (inbox / "notes.txt").write_text("not a sheet", encoding="utf-8")

    first = {o.sheet: o for o in sweep_inbox(inbox=str(inbox))}
    assert first["weekly.csv"].outcome == "ran"
    assert "1 succeeded" in first["weekly.csv"].detail
    assert first["broken.csv"].outcome == "rejected"
    assert (inbox / "processed" / "weekly.csv").is_file()
    report = (inbox / "rejected" / "broken.csv.errors.txt").read_text(encoding="utf-8")
    assert "row 2, column actor: unknown actor 'nobody'" in report
    assert (inbox / "notes.txt").is_file()  # only sheets are taken

    assert sweep_inbox(inbox=str(inbox)) == []  # nothing new: nothing runs, nothing retried

    (inbox / "weekly-copy.csv").write_text(good, encoding="utf-8")  # the same sheet under another name
    (again,) = sweep_inbox(inbox=str(inbox))
    assert (again.outcome, again.campaign_id) == ("duplicate", first["weekly.csv"].campaign_id)
    with rt.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Campaign)) == 1


def test_a_storage_prefix_inbox_on_supabase(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, prefect_server: None
) -> None:
    """Teams upload sheets to Supabase Storage (the fake): the sweep claims them by a server-side move."""
    from castflow.fakes import running_fakes
    from castflow.runtime import get_runtime
    from castflow.settings import reset_settings
    from flows.sweep_inbox import sweep_inbox

    monkeypatch.setenv("CASTFLOW_PROVIDERS__FAKES", "true")
    monkeypatch.setenv("CASTFLOW_STORAGE__BACKEND", "supabase")
    reset_settings()
    rt = get_runtime()
    ensure_sample_actors(rt)
    uploads = data_dir.parent / "uploads"
    uploads.mkdir()
    (uploads / "launch.csv").write_text("actor,script\nleo,Straight from the bucket.\n", encoding="utf-8")
    (uploads / "typo.csv").write_text("actor,script\nleo,\n", encoding="utf-8")
    for name in ("launch.csv", "typo.csv"):
        rt.storage.put_file(f"team-inbox/{name}", uploads / name, "text/csv")

    outcomes = {o.sheet: o.outcome for o in sweep_inbox(inbox="storage:team-inbox")}
    assert outcomes == {"launch.csv": "ran", "typo.csv": "rejected"}
    keys = {k for (_bucket, k) in running_fakes()["supabase"].objects}
    assert not {"team-inbox/launch.csv", "team-inbox/typo.csv"} & keys  # taken out of the inbox
    assert any(k.startswith("team-inbox/processed/") and k.endswith("launch.csv") for k in keys)
    assert any(k.startswith("team-inbox/rejected/") and k.endswith("typo.csv.errors.txt") for k in keys)
    assert sweep_inbox(inbox="storage:team-inbox") == []
