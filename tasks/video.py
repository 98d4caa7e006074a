"""A video's stage graph on Prefect tasks: one task per unit (name, cache key, the one retry policy), and
the adapter that runs a video's plan on them (the generate-video flow).

The adapter submits each unit as soon as the roles it needs are resolved, so units with nothing between
them (scene variant and speech) run concurrently; the budget and the failure bookkeeping are the in-process
runner's own (castflow.pipeline.graph.run_video), so both paths behave alike.
"""

from __future__ import annotations

import functools

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, wait

from castflow import pipeline
from castflow.models import ActorRef, StageOutcome, VideoResult
from castflow.pipeline import GRAPH, PreparedVideo, Unit, Watch
from castflow.pipeline.graph import bookkeeping, take
from castflow.runtime import Runtime, get_runtime
from tasks.policy import is_transient, stage_cache, with_policy

__all__ = ["is_transient", "record", "run_on_tasks", "scene_variant", "unit_task"]


@functools.cache
def unit_task(unit: Unit) -> Task[[PreparedVideo, dict[str, StageOutcome]], StageOutcome]:
    """The Prefect task of ``unit`` (made once per unit; retries are applied per run by ``with_policy``)."""
    assert unit.task is not None, f"unit {unit.name} runs inside the flow"
    key_of = unit.key

    def body(video: PreparedVideo, done: dict[str, StageOutcome]) -> StageOutcome:
        return unit.run(get_runtime(), video, done)

    body.__name__ = body.__qualname__ = unit.task.replace("-", "_")  # Prefect's task key
    body.__doc__ = f"The {unit.name.replace('_', ' ')} stage of a video."
    name, run_name = unit.task, unit.task + "-{video.actor.key}"
    if key_of is None or not unit.ledger:
        return task(
            name=name, task_run_name=run_name, cache_policy=NO_CACHE, retry_condition_fn=is_transient
        )(body)
    return task(
        name=name,
        task_run_name=run_name,
        cache_key_fn=stage_cache(lambda p: key_of(get_runtime(), p["video"], p["done"])),
        retry_condition_fn=is_transient,
    )(body)


@task(name="record", cache_policy=NO_CACHE, retry_condition_fn=is_transient)
def record(video: PreparedVideo, done: dict[str, StageOutcome], used: list[StageOutcome]) -> VideoResult:
    """Write the finished video's row (idempotent per request)."""
    return pipeline.record_success(get_runtime(), video, done, used)


@task(
    name="scene-variant",
    task_run_name="scene-variant-{actor.key}",
    cache_key_fn=stage_cache(
        lambda p: pipeline.scene_variant_key(get_runtime(), p["actor"].image, p["prompt"], p["seed"])
    ),
    retry_condition_fn=is_transient,
)
def scene_variant(actor: ActorRef, prompt: str, seed: int) -> StageOutcome:
    """Edit the actor's portrait into the scene (the create-image-variant flow; a video's scene variant
    is its unit's task, which shares this cache key)."""
    return pipeline.scene_variant(get_runtime(), actor, prompt, seed)


def _outcome(future: PrefectFuture[StageOutcome]) -> StageOutcome:
    """The unit's outcome; a Prefect cache hit counts as reused (it cost nothing this time)."""
    outcome = future.result()
    if future.state.name == "Cached" and not outcome.reused:
        return outcome.model_copy(update={"reused": True})
    return outcome


def run_on_tasks(
    rt: Runtime, video: PreparedVideo, *, watch: Watch | None = None, graph: tuple[Unit, ...] = GRAPH
) -> VideoResult:
    """The video's plan as Prefect tasks, then its record; failures recorded as the in-process runner
    records them (the failing unit, the reason) and re-raised."""
    done: dict[str, StageOutcome] = {}
    used: list[StageOutcome] = []
    in_flight: dict[str, tuple[Unit, PrefectFuture[StageOutcome]]] = {}  # by the role it makes
    current = ["prepare"]

    def resolve(roles: tuple[str, ...] | list[str]) -> None:
        """Wait for the units making ``roles`` (all of them, so each is recorded even when one fails),
        then take their outcomes in graph order."""
        waiting = [in_flight.pop(role) for role in dict.fromkeys(roles) if role in in_flight]
        wait([future for _unit, future in waiting])
        for unit, future in sorted(waiting, key=lambda w: graph.index(w[0])):
            current[0] = unit.name
            take(unit, _outcome(future), done, used, watch)

    with bookkeeping(rt, video, used, current):
        for unit in pipeline.plan(video, graph):
            resolve((*unit.needs, unit.makes))  # its inputs, and an earlier maker of its role
            current[0] = unit.name
            if watch is not None:
                watch.before(unit, rt, video, done)
            if unit.task is None:
                take(unit, unit.run(rt, video, done), done, used, watch)
                continue
            future = with_policy(unit_task(unit), rt.settings).submit(video, dict(done))
            in_flight[unit.makes] = (unit, future)
        resolve(list(in_flight))
        current[0] = "record"
        return with_policy(record, rt.settings)(video, done, used)
