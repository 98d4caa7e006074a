"""A spending cap shared by the videos of a run, and each video's hold on it.

A video reserves its estimate before it starts; before each priced unit its :class:`Spend` compares the
unit's true price (now that its inputs exist: the real length of the speech) with what was reserved for
it and reserves the difference, or stops the video (``Skipped``) when the cap would be crossed.

:class:`Budget` keeps its count in this process (one video's cap, ``generate-video``'s budget).
:class:`LedgerBudget` is a campaign's: its holds are rows of the database and its spend is the ledger's,
so every process and worker of the campaign draws on one cap and no number of them can cross it.
"""

from __future__ import annotations

import threading
import uuid

from castflow.estimates import RowEstimate, finished
from castflow.models import StageOutcome
from castflow.pipeline import Done, PreparedVideo, Skipped, Unit
from castflow.runtime import Runtime


class Budget:
    """A spending cap shared by the rows of a run: a paid stage starts only if its cost fits."""

    def __init__(self, limit_usd: float | None, spent_usd: float = 0.0) -> None:
        self.limit = limit_usd
        self.spent = spent_usd
        self.reserved = 0.0
        self._lock = threading.Lock()

    def reserve(self, amount: float, *, holder: str = "", fresh: bool = False) -> bool:
        """Hold ``amount`` for a row about to spend it; False when it would cross the cap."""
        if self.limit is None or amount <= 0:
            return True
        with self._lock:
            if self.spent + self.reserved + amount > self.limit + 1e-9:
                return False
            self.reserved += amount
            return True

    def settle(self, reserved: float, actual: float, *, holder: str = "") -> None:
        """Release a reservation and count what was really spent."""
        with self._lock:
            if self.limit is not None and reserved > 0:
                self.reserved = max(0.0, self.reserved - reserved)
            self.spent += actual


class LedgerBudget(Budget):
    """A campaign's cap shared by every process that runs its rows: each row's hold is a row of
    ``budget_hold`` and what was spent is the ledger's (the stage jobs the campaign paid for), checked
    and held in one transaction under a lock on the campaign (``queries.hold_budget``).

    A row's hold covers its stages from before their submit until its end, when the stages' true costs
    are in the ledger: between those two moments a cost counts twice (the cap errs on the safe side),
    never zero times. A row that starts again (its worker died) replaces its old hold.
    """

    def __init__(self, rt: Runtime, campaign_id: uuid.UUID, limit_usd: float | None) -> None:
        super().__init__(limit_usd)
        self.rt = rt
        self.campaign_id = campaign_id

    def reserve(self, amount: float, *, holder: str = "", fresh: bool = False) -> bool:
        if self.limit is None or (amount <= 0 and not fresh):
            return True
        from castflow import claims
        from castflow.db import queries

        return self.rt.db(
            lambda c: queries.hold_budget(
                c,
                campaign_id=self.campaign_id,
                holder=holder,
                amount=max(amount, 0.0),
                owner=str(claims.me()),
                fresh=fresh,
            ),
            what="holding budget",
        )

    def settle(self, reserved: float, actual: float, *, holder: str = "") -> None:
        if self.limit is None:
            return
        from castflow.db import queries

        self.rt.db(
            lambda c: queries.release_budget(c, campaign_id=self.campaign_id, holder=holder),
            what="releasing budget",
        )


class Spend:
    """One video's hold on a :class:`Budget` (a ``pipeline.Watch``): what it reserved, what it paid."""

    def __init__(self, budget: Budget, estimate: RowEstimate | None = None, holder: str = "") -> None:
        self.budget = budget
        self.estimate = estimate
        self.holder = holder
        self.held = 0.0
        self.spent = 0.0

    def start(self) -> bool:
        """Reserve the video's estimate; False when the budget cannot afford it."""
        amount = self.estimate.total_usd if self.estimate is not None else 0.0
        if not self.budget.reserve(amount, holder=self.holder, fresh=True):
            return False
        self.held = max(amount, 0.0)
        return True

    def before(self, unit: Unit, rt: Runtime, video: PreparedVideo, done: Done) -> None:
        if self.budget.limit is None or unit.price is None:
            return
        planned = self.estimate.by_stage.get(unit.name, 0.0) if self.estimate is not None else 0.0
        exact = unit.cost_now(rt, video, done)
        if exact <= planned:
            return
        if unit.key is not None and finished(rt, unit.key(rt, video, done)) is not None:
            return  # done already (another row, an earlier run): it costs nothing
        if not self.budget.reserve(exact - planned, holder=self.holder):
            raise Skipped(f"budget: {unit.name.replace('_', ' ')} would cost ${exact:.2f}")
        self.held += exact - planned

    def after(self, outcome: StageOutcome) -> None:
        if not outcome.reused:
            self.spent += outcome.cost_usd

    def settle(self, actual: float | None = None) -> None:
        """Release the hold, counting ``actual`` (default: what the stages reported) as spent."""
        self.budget.settle(self.held, self.spent if actual is None else actual, holder=self.holder)
        self.held = 0.0
