"""One unit of a video's stage graph: what it reads, what it makes, its stage key, its price and its run.

Units read the outcomes of earlier units by *role* (``image``, ``audio``, ``video``, ...), not by name:
a unit that refines a role (captions burn the script into the ``video``) replaces its outcome for the
units after it, so a new unit slots in without the others knowing of it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from castflow.models import StageOutcome
from castflow.pipeline.prepare import PreparedVideo
from castflow.runtime import Runtime

Done = Mapping[str, StageOutcome]  # the outcomes so far, by role
Run = Callable[[Runtime, PreparedVideo, Done], StageOutcome]
Key = Callable[[Runtime, PreparedVideo, Done], str]
Price = Callable[[Runtime, PreparedVideo, Done], float]


@dataclass(frozen=True)
class Unit:
    """One stage of a video.

    ``applies`` says whether the video needs it at all (a script is spoken, an uploaded audio is
    ingested); ``needs`` are the roles it reads (they order the graph, and the Prefect adapter waits for
    them); ``makes`` is the role its outcome fills. ``key`` is its stage key (the Prefect cache key, and
    how an estimate knows it is already done); ``price`` is what running it would cost now, asked of its
    provider; ``guess_seconds`` the length of its output before it runs. ``ledger``: the outcome is a ``stage_run`` row that the video links to (its spend).
    ``task``: the Prefect task name; None runs it inside the flow (nothing worth a task run).
    """

    name: str
    makes: str
    run: Run
    needs: tuple[str, ...] = ()
    applies: Callable[[PreparedVideo], bool] = lambda _video: True
    key: Key | None = None
    price: Price | None = None
    ledger: bool = True
    task: str | None = None
    # How long its output will play, guessed before it runs (estimates: lip-sync is priced by it).
    guess_seconds: Callable[[PreparedVideo], float | None] = lambda _video: None

    def cost_now(self, rt: Runtime, video: PreparedVideo, done: Done) -> float:
        """What running this unit would cost with these inputs (0 for free units)."""
        return self.price(rt, video, done) if self.price is not None else 0.0
