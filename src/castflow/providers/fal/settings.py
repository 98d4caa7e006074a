"""fal's settings group (``CASTFLOW_FAL__…``): hosts, the image model and the polling pace."""

from __future__ import annotations

from pydantic import Field

from castflow.section import Section


class FalSettings(Section):
    """fal.ai hosts and models (the hosts are settings so the loopback fake can stand in)."""

    queue_url: str = "https://queue.fal.run"
    rest_url: str = "https://rest.fal.ai"
    cdn_url: str = "https://v3.fal.media"
    image_model: str = "fal-ai/nano-banana/edit"
    aspect_ratio: str = "9:16"
    image_deadline_s: float = Field(default=600, gt=0)
    speech_deadline_s: float = Field(default=600, gt=0)
    poll_first_s: float = Field(default=1.0, gt=0, description="First status poll delay; doubles each time.")
    poll_cap_s: float = Field(default=16.0, gt=0, description="Longest delay between status polls.")
