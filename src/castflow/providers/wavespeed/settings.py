"""WaveSpeed's settings group (``CASTFLOW_WAVESPEED__…``): host, model, the spec's open points, pacing."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from castflow.section import Section


class WaveSpeedSettings(Section):
    """WaveSpeed (InfiniteTalk lip-sync). The host is a setting so the loopback fake can stand in."""

    base_url: str = "https://api.wavespeed.ai"
    lipsync_model: str = "wavespeed-ai/infinitetalk"
    # The spec (wavespeed.md section 3.2) has a doubt: SDKs use /predictions/{id}/result, newer docs show
    # /predictions/{id}. "result" is the default; "bare" switches to the other form.
    result_path: Literal["result", "bare"] = "result"
    # Media upload (section 5): the documented multipart endpoint, or the SDK's direct-upload ticket + PUT.
    upload_mode: Literal["binary", "ticket"] = "binary"
    prompt: str | None = Field(default=None, description="Optional positive prompt sent with each render.")
    # Deadline for a render: base + per_audio_second x audio seconds (the docs say 10-30 s of wall time
    # per second of video; 60 s per second leaves room for queueing).
    deadline_base_s: float = Field(default=600, gt=0)
    deadline_per_audio_s: float = Field(default=60, ge=0)
    expected_seconds_per_audio_second: float = Field(
        default=10,
        ge=0,
        description="The docs say 10-30 s of wall time per second of video: the first poll waits the low end.",
    )
    poll_first_s: float = Field(default=5, gt=0, description="The docs ask for >= 5 s between checks.")
    poll_cap_s: float = Field(default=30, gt=0)
