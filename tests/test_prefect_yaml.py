"""Every prefect.yaml entrypoint loads and renders a parameter schema for the UI."""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema

ROOT = Path(__file__).resolve().parents[1]


def test_every_entrypoint_loads() -> None:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = config["deployments"]
    assert {d["name"] for d in deployments} >= {"generate-video", "create-image-variant"}
    for d in deployments:
        path, func = d["entrypoint"].split(":")
        flow = load_flow_from_entrypoint(f"{ROOT / path}:{func}")
        assert isinstance(flow, Flow)
        assert flow.name == d["name"]
        schema = parameter_schema(flow).model_dump()
        assert schema["properties"], d["name"]
        assert "secret" not in str(d).lower()


def test_generate_video_form_describes_its_fields() -> None:
    flow = load_flow_from_entrypoint(f"{ROOT / 'flows/generate_video.py'}:generate_video")
    schema = parameter_schema(flow).model_dump()
    request = schema["definitions"]["VideoRequest"]["properties"]
    for field in ("actor", "script", "audio", "scene", "resolution", "seed"):
        assert field in request
    assert request["actor"]["description"]
