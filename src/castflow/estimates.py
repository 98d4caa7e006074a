"""What a video would cost if run now, from its stage graph, without calling any paid API.

Each unit of the video's plan is priced by its provider (``Unit.price``); a unit already done (its stage
key has a finished run), or one an earlier row of the same sheet will pay for, costs nothing. A unit not
yet run stands in for its output with a placeholder named by its stage key, so the units after it get a
stable key of their own (two rows sharing a scene and a script share one lip-sync estimate).

Each row is also priced as on the real providers (:class:`RealPrices`, from the vendors' price lists),
whatever plays each role here: what a first run there would cost, each stage shared by rows paid once,
whether or not it has run here (a stage the chosen vendor plays is priced by that vendor).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from pydantic import BaseModel

from castflow.db import queries
from castflow.models import MediaRef, StageOutcome
from castflow.pipeline import GRAPH, PreparedVideo, finished_output, plan
from castflow.providers.vendors import reference_prices, title
from castflow.runtime import Runtime

# The estimate's columns, by the role a unit fills (a unit that refines a role adds to its column).
ROLE_COLUMNS = {
    "image": "image_usd",
    "audio": "speech_usd",
    "audio_part1": "speech_usd",  # a script spoken in parts: each part is speech
    "audio_part2": "speech_usd",
    "video": "lipsync_usd",
}


class RowEstimate(BaseModel):
    """What a row would cost if run now (stages already done cost nothing)."""

    row: int
    row_id: str
    actor: str
    image_usd: float = 0.0
    speech_usd: float = 0.0
    lipsync_usd: float = 0.0
    speech_seconds: float = 0.0
    reused_stages: int = 0
    by_stage: dict[str, float] = {}  # each priced unit's estimate (a budget compares its true price)
    real_usd: float = 0.0  # the same row on the real providers (see RealPrices)
    real_by_stage: dict[str, float] = {}  # each priced unit on the real providers
    first_stages: list[str] = []  # the units whose stage this row is the first to need (jobs on a first run)

    @property
    def total_usd(self) -> float:
        return round(self.image_usd + self.speech_usd + self.lipsync_usd, 6)


class _Priced:
    """A role's price function where a unit's price asks its provider (``rt.image.price()``, ...)."""

    def __init__(self, price: Callable[..., float] | None) -> None:
        self._price = price

    def price(self, *args: Any) -> float:
        return self._price(*args) if self._price is not None else 0.0


class _AnyVoice:
    """Speech priced the same for every voice provider (``rt.speech.get(provider)``)."""

    def __init__(self, priced: _Priced) -> None:
        self._priced = priced

    def get(self, _provider: str) -> _Priced:
        return self._priced


class RealPrices:
    """Stands in for the runtime when a unit is priced as on the real providers: each role priced by the
    vendor chosen for it, else the first registered vendor that plays it (``vendors.reference_prices``).
    Only units' ``price`` functions read it."""

    def __init__(self, rt: Runtime) -> None:
        found = reference_prices(rt.settings)
        self.settings = rt.settings
        self.image = _Priced(found["image"][1] if "image" in found else None)
        self.speech = _AnyVoice(_Priced(found["speech"][1] if "speech" in found else None))
        self.lipsync = _Priced(found["lipsync"][1] if "lipsync" in found else None)
        self.vendors = {role: title(name) for role, (name, _price) in found.items()}

    def describe(self) -> str:
        """Who the real providers are: 'image fal, speech fal, lip-sync WaveSpeed'."""
        names = {"image": "image", "speech": "speech", "lipsync": "lip-sync"}
        return ", ".join(f"{names[role]} {vendor}" for role, vendor in self.vendors.items())


def configured(rt: Runtime) -> str:
    """Who plays each role here: 'image local, speech local, lip-sync local'."""
    voices = "/".join(sorted(title(name) for name in rt.speech))
    return f"image {title(rt.image.name)}, speech {voices}, lip-sync {title(rt.lipsync.name)}"


def finished(rt: Runtime, key: str) -> MediaRef | None:
    """The output of a finished stage, or None."""
    return rt.db(lambda c: finished_output(queries.stage_run_state(c, stage_key=key)))


def finished_many(rt: Runtime, keys: Iterable[str]) -> dict[str, MediaRef]:
    """The outputs of the finished stages among ``keys`` (one query per few hundred keys)."""
    states = rt.db(lambda c: queries.stage_run_states(c, stage_keys=keys), what="reading finished stages")
    outputs = {key: finished_output(state) for key, state in states.items()}
    return {key: out for key, out in outputs.items() if out is not None}


@dataclass(frozen=True, slots=True)
class _Pending:
    """Stands in for the output of a unit not run yet (a MediaRef's fields; no model per row and unit:
    a sheet has 100,000 rows)."""

    key: str
    sha256: str
    content_type: str
    seconds: float | None


@dataclass(frozen=True, slots=True)
class _Estimated:
    """A unit's outcome as far as the units after it read it (a StageOutcome's fields)."""

    stage: str
    stage_key: str
    output: MediaRef | _Pending


@dataclass
class _Row:
    """One video's estimate as the units are priced."""

    video: PreparedVideo
    row: int
    row_id: str
    units: set[str]  # the names of the units of its plan
    done: dict[str, StageOutcome] = field(default_factory=dict)
    by_stage: dict[str, float] = field(default_factory=dict)
    columns: dict[str, float] = field(default_factory=lambda: dict.fromkeys(ROLE_COLUMNS.values(), 0.0))
    reused: int = 0
    real: float = 0.0
    real_by_stage: dict[str, float] = field(default_factory=dict)
    first: list[str] = field(default_factory=list)

    def estimate(self) -> RowEstimate:
        audio = self.done.get("audio")
        seconds = audio.output.seconds if audio is not None and audio.output.seconds else 0.0
        return RowEstimate(
            row=self.row,
            row_id=self.row_id,
            actor=self.video.actor.key,
            speech_seconds=round(seconds, 2),
            reused_stages=self.reused,
            by_stage=self.by_stage,
            real_usd=round(self.real, 6),
            real_by_stage=self.real_by_stage,
            first_stages=self.first,
            **self.columns,
        )


def estimate_videos(
    rt: Runtime,
    videos: Iterable[tuple[PreparedVideo, int, str]],
    *,
    seen: set[str] | None = None,
    real: RealPrices | None = None,
) -> list[RowEstimate]:
    """Cost estimates of many videos ((video, row, row id) each), counting a stage shared between them
    once: a stage an earlier video will pay for costs nothing in a later one (``seen`` carries the keys
    across calls).

    The graph is priced unit by unit across all the videos, so each unit's finished stages are looked
    up in a few queries rather than one per video (a sheet of 100,000 rows). With ``real``, each row is
    also priced as on the real providers, as a first run there: every unit at the real price unless an
    earlier row shares it, whether or not it finished here."""
    seen = set() if seen is None else seen
    rows = [_Row(video, row, row_id, {u.name for u in plan(video)}) for video, row, row_id in videos]
    for unit in GRAPH:
        ready: list[tuple[_Row, str, bool]] = []
        needs = frozenset(unit.needs)
        for r in rows:
            if unit.name not in r.units or not r.done.keys() >= needs:
                continue  # not in its plan, or fed by a unit the estimate does not run (QC)
            if unit.key is None:
                if not unit.needs and unit.price is None:  # free and pure: the given portrait
                    r.done[unit.makes] = unit.run(rt, r.video, r.done)
                continue
            # A placeholder input (a unit not run yet) means this unit cannot have run either.
            runnable = unit.ledger and all(r.done[role].output.content_type for role in unit.needs)
            ready.append((r, unit.key(rt, r.video, r.done), runnable))
        found = finished_many(rt, (key for _r, key, runnable in ready if runnable)) if ready else {}
        for r, key, runnable in ready:  # in row order: the first row that needs a stage pays for it
            output = found.get(key) if runnable else None
            shared = key in seen
            cost = unit.cost_now(rt, r.video, r.done) if output is None and not shared else 0.0
            if real is not None and unit.price is not None:  # a first run there: done here or not
                there = 0.0 if shared else unit.cost_now(cast("Runtime", real), r.video, r.done)
                r.real += there
                r.real_by_stage[unit.name] = there
            if not shared and unit.ledger:
                r.first.append(unit.name)
            if unit.ledger and (output is not None or shared):
                r.reused += 1
            seen.add(key)
            made = output or _Pending(
                key="", sha256=key, content_type="", seconds=unit.guess_seconds(r.video)
            )
            # Read by the later units' key and price functions as a StageOutcome (the same fields).
            r.done[unit.makes] = cast("StageOutcome", _Estimated(unit.name, key, made))
            if unit.price is not None:
                r.by_stage[unit.name] = cost
                column = ROLE_COLUMNS.get(unit.makes)
                if column is not None:
                    r.columns[column] += cost
    return [r.estimate() for r in rows]


def estimate_video(
    rt: Runtime,
    video: PreparedVideo,
    *,
    row: int = 0,
    row_id: str = "",
    seen: set[str] | None = None,
    real: RealPrices | None = None,
) -> RowEstimate:
    """Cost estimate of one video (see :func:`estimate_videos`)."""
    return estimate_videos(rt, [(video, row, row_id)], seen=seen, real=real)[0]


def budget_total(estimates: Iterable[RowEstimate]) -> float:
    return round(math.fsum(e.total_usd for e in estimates), 6)


def real_total(estimates: Iterable[RowEstimate]) -> float:
    return round(math.fsum(e.real_usd for e in estimates), 6)


def plays_free(rt: Runtime) -> bool:
    """Whether a role here costs nothing (the embedded image editor or renderer): then what the real
    providers would charge says more than what was spent."""
    return rt.image.price() == 0 or rt.lipsync.price(10.0, "480p") == 0
