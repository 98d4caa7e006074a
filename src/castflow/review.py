"""The review page of a campaign's previews: one self-contained HTML contact sheet with a player per row,
its variant axes and what its full render would cost, and approve/reject controls that download an
approvals CSV (``row_id,decision,reason``) for ``castflow campaign approve CAMPAIGN --file``.

The page holds no secret and calls nothing: its script only reads the controls and builds the CSV in the
browser. Videos up to a few MiB are inside the page (reports.embedded_links); larger ones are linked.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from castflow.reports import Links, short

DECISIONS = ("approved", "rejected")
APPROVAL_COLUMNS = ("row_id", "decision", "reason")
# The sheet's columns shown on a card, when a row has them (a matrix's axes first).
AXIS_COLUMNS = ("name", "hook_id", "body_id", "actor", "scene_id", "product_id")


@dataclass(frozen=True)
class Take:
    """One row's preview as the page shows it."""

    row: int
    row_id: str
    video_key: str | None  # None: the preview failed (``error`` says why)
    script: str
    full_render_usd: float  # what approving it would cost now (its paid stages done, the render left)
    axes: Mapping[str, str] = field(default_factory=dict)
    decision: str | None = None  # approved | rejected | None (not decided yet)
    error: str | None = None


def render(campaign: str, takes: Iterable[Take], links: Links, *, render_cost_note: str = "") -> str:
    """The page (a string of HTML)."""
    takes = list(takes)
    total = sum(t.full_render_usd for t in takes if t.video_key)
    cards = "".join(_card(t, links) for t in takes)
    rows = json.dumps([t.row_id for t in takes])
    note = links.note()
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>castflow · review {html.escape(campaign)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#1d2330}}
.muted{{color:#6b7280;margin:.2rem 0}} .bar{{position:sticky;top:0;background:#fff;padding:.6rem 0;border-bottom:1px solid #e5e7eb;z-index:1}}
button{{font:inherit;padding:.35rem .8rem;border-radius:6px;border:1px solid #9ca3af;background:#f9fafb;cursor:pointer}}
button.primary{{background:#2563eb;color:#fff;border-color:#2563eb}}
.sheet{{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:1rem;margin-top:1rem}}
.take{{border:1px solid #e5e7eb;border-radius:8px;padding:.5rem}} .take video{{width:100%;aspect-ratio:9/16;background:#111;border-radius:6px}}
.take.approved{{outline:3px solid #16a34a}} .take.rejected{{opacity:.55;outline:3px solid #dc2626}}
.take q{{display:block;margin:.3rem 0;font-size:13px;color:#374151}} .take dl{{margin:.2rem 0;display:grid;grid-template-columns:auto 1fr;gap:0 .5rem;font-size:12px;color:#6b7280}} .take dd{{margin:0;word-break:break-all}}
.take label{{margin-right:.8rem;font-size:14px}} .failed{{color:#b91c1c;font-size:13px}}
</style></head><body>
<h1>Review: {html.escape(campaign)}</h1>
<p class=muted>{len(takes)} take(s). These are previews: the lip-sync is castflow's free local render; the scene and the
voice are the real ones, already paid. Rendering every take in full would cost about ${total:.2f}{html.escape(render_cost_note)}.</p>
<p class=muted>Approve or reject each take, then download the approvals and run
<code>castflow campaign approve {html.escape(campaign)} --file approvals.csv</code> (or resume the paused run in Prefect).</p>
<div class=bar><button type=button class=primary onclick="download()">Download approvals.csv</button>
<button type=button onclick="every('approved')">Approve all</button> <button type=button onclick="every('rejected')">Reject all</button>
<span id=count class=muted></span></div>
<div class=sheet>{cards}</div>
<p class=muted>{html.escape(note)}</p>
<script>
const ROWS = {rows};
function choice(id) {{ const c = document.querySelector('input[name="d-' + CSS.escape(id) + '"]:checked'); return c ? c.value : ""; }}
function paint() {{
  let a = 0, r = 0;
  for (const id of ROWS) {{
    const d = choice(id), card = document.getElementById("t-" + id);
    if (card) {{ card.classList.toggle("approved", d === "approved"); card.classList.toggle("rejected", d === "rejected"); }}
    a += d === "approved"; r += d === "rejected";
  }}
  document.getElementById("count").textContent = a + " approved, " + r + " rejected, " + (ROWS.length - a - r) + " undecided";
}}
function every(d) {{ for (const id of ROWS) {{ const i = document.querySelector('input[name="d-' + CSS.escape(id) + '"][value="' + d + '"]'); if (i) i.checked = true; }} paint(); }}
function cell(v) {{ v = String(v); if (/^[=+\\-@\\t\\r]/.test(v)) v = "'" + v; return /[",\\n\\r]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }}
function download() {{
  const lines = ["row_id,decision,reason"];
  for (const id of ROWS) {{
    const d = choice(id); if (!d) continue;
    const why = document.getElementById("w-" + id);
    lines.push([id, d, why ? why.value : ""].map(cell).join(","));
  }}
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([lines.join("\\n") + "\\n"], {{type: "text/csv"}}));
  link.download = "approvals.csv"; link.click();
}}
document.addEventListener("change", paint); paint();
</script>
</body></html>
"""


def _card(take: Take, links: Links) -> str:
    rid = html.escape(take.row_id)
    axes = "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(short(v, 80))}</dd>" for k, v in take.axes.items() if v
    )
    if take.video_key is None:
        body = f"<p class=failed>No preview: {html.escape(short(take.error or 'it failed', 300))}</p>"
    else:
        body = f'<video controls preload=metadata src="{html.escape(links.href(take.video_key))}"></video>'
    controls = "".join(
        f'<label><input type=radio name="d-{rid}" value="{d}"{" checked" if take.decision == d else ""}> '
        f"{'approve' if d == 'approved' else 'reject'}</label>"
        for d in DECISIONS
    )
    return (
        f'<div class=take id="t-{rid}">{body}<q>{html.escape(short(take.script, 200))}</q>'
        f"<dl><dt>row</dt><dd>{take.row} · {rid}</dd>{axes}"
        f"<dt>full render</dt><dd>${take.full_render_usd:.3f}</dd></dl>"
        f'{controls}<input id="w-{rid}" placeholder="reason (optional)" style="width:95%;font-size:12px">'
        "</div>"
    )


class ApprovalsError(ValueError):
    """An approvals file that cannot be read: the row of the file and why."""


def read_approvals(path: Path, known: Iterable[str]) -> dict[str, tuple[str, str]]:
    """``row_id -> (decision, reason)`` from an approvals CSV (as the review page downloads it); every
    row id must be one of the campaign's (``known``)."""
    rows = set(known)
    found: dict[str, tuple[str, str]] = {}
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ApprovalsError(f"{path.name}: cannot be read ({exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [c.strip().lower() for c in reader.fieldnames or []]
    if "row_id" not in header or "decision" not in header:
        raise ApprovalsError(f"{path.name}: the header needs row_id and decision (row_id,decision,reason)")
    for n, record in enumerate(reader, start=2):
        cells = {k.strip().lower(): (v or "").strip() for k, v in record.items() if k is not None}
        row_id = cells.get("row_id", "")
        decision = cells.get("decision", "").lower()
        decision = {"approve": "approved", "reject": "rejected", "yes": "approved", "no": "rejected"}.get(
            decision, decision
        )
        if not row_id and not decision:
            continue
        if row_id not in rows:
            raise ApprovalsError(f"{path.name}: row {n}: {row_id!r} is not a row of this campaign")
        if decision not in DECISIONS:
            raise ApprovalsError(f"{path.name}: row {n}: decision {decision!r} is not approved or rejected")
        found[row_id] = (decision, cells.get("reason", "")[:500])
    return found
