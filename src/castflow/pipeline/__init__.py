"""One video, without Prefect: a request prepared, its stage graph run, its row recorded.

``prepare`` checks a request before any spend; ``unit`` and ``steps`` declare the stages; ``graph`` holds
the graph and the in-process runner; ``runner`` runs one stage once per stage key; ``records`` writes the
video's row. The names below are the package's face.
"""

from castflow.pipeline.errors import Skipped, StageFailed, UserError
from castflow.pipeline.graph import GRAPH, Watch, plan, run_video
from castflow.pipeline.prepare import PreparedVideo, actor_ref, prepare_video, video_key
from castflow.pipeline.records import record_error, record_failure, record_start, record_success, stage_links
from castflow.pipeline.runner import PAYER, StageOutcomeUnknown, finished_output, run_stage
from castflow.pipeline.steps import (
    CAPTIONS_MODEL,
    add_captions,
    audio_ingest_key,
    captions_key,
    given_image,
    ingest_audio,
    lipsync,
    lipsync_key,
    publish,
    quality_check,
    scene_variant,
    scene_variant_key,
    speech,
    speech_key,
)
from castflow.pipeline.unit import Done, Unit

__all__ = [
    "CAPTIONS_MODEL",
    "GRAPH",
    "PAYER",
    "Done",
    "PreparedVideo",
    "Skipped",
    "StageFailed",
    "StageOutcomeUnknown",
    "Unit",
    "UserError",
    "Watch",
    "actor_ref",
    "add_captions",
    "audio_ingest_key",
    "captions_key",
    "finished_output",
    "given_image",
    "ingest_audio",
    "lipsync",
    "lipsync_key",
    "plan",
    "prepare_video",
    "publish",
    "quality_check",
    "record_error",
    "record_failure",
    "record_start",
    "record_success",
    "run_stage",
    "run_video",
    "scene_variant",
    "scene_variant_key",
    "speech",
    "speech_key",
    "stage_links",
    "video_key",
]
