"""The ``create_image_variant`` flow: one scene variant of an actor's portrait, kept for reuse."""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import BaseModel

from castflow import pipeline
from castflow.db import queries
from castflow.runtime import get_runtime
from castflow.stages import normalise_text
from flows.form import label
from tasks import video as t
from tasks.policy import with_policy


class VariantResult(BaseModel):
    """A stored image variant."""

    variant_id: str
    actor: str
    prompt: str
    seed: int
    image_key: str
    image_url: str
    reused: bool


@flow(name="create-image-variant", validate_parameters=True)
def create_image_variant(
    actor: Annotated[str, label("Actor", min_length=1)],
    prompt: Annotated[str, label("Scene")],
    seed: Annotated[int, label("Seed", ge=0, le=2**31 - 1)] = 0,
) -> VariantResult:
    """Edit an actor's portrait into a scene and store it as a reusable image variant.

    Args:
        actor: The actor's key in the library (castflow actors list).
        prompt: Scene prompt for the edit, e.g. 'in a sunny kitchen'.
        seed: The same seed gives the same image; another seed, another take.
    """
    rt = get_runtime()
    text = normalise_text(prompt)
    if not text:
        raise pipeline.UserError("prompt is empty")
    limit = rt.settings.prompt_limit(rt.image.model)
    if len(text) > limit:
        raise pipeline.UserError(
            f"prompt is {len(text)} characters long; {rt.image.model} takes at most {limit}"
        )
    ref = pipeline.actor_ref(rt, actor)
    future = with_policy(t.scene_variant, rt.settings).submit(ref, text, seed)
    outcome = future.result()
    with rt.session() as s:
        variant = queries.get_image_variant_by_stage_key(s, stage_key=outcome.stage_key)
        assert variant is not None
        return VariantResult(
            variant_id=str(variant.id),
            actor=ref.key,
            prompt=variant.prompt,
            seed=variant.seed,
            image_key=variant.image_key,
            image_url=rt.storage.url(variant.image_key),
            reused=outcome.reused or future.state.name == "Cached",
        )
