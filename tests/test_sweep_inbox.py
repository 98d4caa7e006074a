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
    from flows.sweep_inbox import InboxParams, sweep_inbox

    ensure_sample_actors(rt)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    good = "actor,script\nmaya,Inbox sheets run by themselves.\n"
    (inbox / "weekly.csv").write_text(good, encoding="utf-8")
    (inbox / "broken.csv").write_text("actor,script\nnobody,Who?\n", encoding="utf-8")
    (inbox / "notes.txt").write_text("not a sheet", encoding="utf-8")

    first = {o.sheet: o for o in sweep_inbox(InboxParams(inbox=str(inbox)))}
    assert first["weekly.csv"].outcome == "ran"
    assert "1 succeeded" in first["weekly.csv"].detail
    assert first["broken.csv"].outcome == "rejected"
    assert (inbox / "processed" / "weekly.csv").is_file()
    report = (inbox / "rejected" / "broken.csv.errors.txt").read_text(encoding="utf-8")
    assert "row 2, column actor: unknown actor 'nobody'" in report
    assert (inbox / "notes.txt").is_file()  # only sheets are taken

    assert sweep_inbox(InboxParams(inbox=str(inbox))) == []  # nothing new: nothing runs, nothing retried

    (inbox / "weekly-copy.csv").write_text(good, encoding="utf-8")  # the same sheet under another name
    (again,) = sweep_inbox(InboxParams(inbox=str(inbox)))
    assert (again.outcome, again.campaign_id) == ("duplicate", first["weekly.csv"].campaign_id)
    with rt.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Campaign)) == 1
