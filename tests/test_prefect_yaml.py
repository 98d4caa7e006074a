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
    assert {d["name"] for d in deployments} == {
        "generate-video",
        "create-image-variant",
        "run-campaign",
        "campaign-chunk",
        "campaign-report",
        "sweep-inbox",
    }
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


def test_sweep_inbox_schedule_is_declared_inactive_and_serve_builds_all_deployments() -> None:
    from castflow.cli import deployments_from_yaml

    built = {d.name: d for d in deployments_from_yaml(ROOT / "prefect.yaml")}
    assert set(built) == {
        "generate-video",
        "create-image-variant",
        "run-campaign",
        "campaign-chunk",
        "campaign-report",
        "sweep-inbox",
    }
    (schedule,) = built["sweep-inbox"].schedules
    assert schedule.active is False
    assert schedule.schedule.cron == "*/15 * * * *"
    assert not built["generate-video"].schedules


def test_campaign_forms_are_flat_and_describe_their_fields() -> None:
    """One field per option, each titled and described, with a plain type and a default (no nested
    box, no 'None' toggle): the forms an analyst fills in the Prefect UI."""
    for entry in (
        "flows/run_campaign.py:run_campaign",
        "flows/campaign_report.py:campaign_report",
        "flows/sweep_inbox.py:sweep_inbox",
        "flows/create_image_variant.py:create_image_variant",
    ):
        path, func = entry.split(":")
        schema = parameter_schema(load_flow_from_entrypoint(f"{ROOT / path}:{func}")).model_dump()
        fields = schema["properties"]
        assert fields
        assert not schema.get("definitions"), entry  # nothing nested
        for name, field in fields.items():
            assert field.get("description"), (entry, name)
            assert "<" not in field["description"], (entry, name)  # the UI would read it as a tag
            assert field.get("title", name) != name, (entry, name)  # a label, not the parameter name
            assert field.get("type") in {"string", "boolean", "number", "integer"}, (entry, name, field)
            assert "anyOf" not in field, (entry, name)
            assert "default" in field or name in schema.get("required", []), (entry, name)


def test_the_generate_video_form_labels_and_describes_its_fields() -> None:
    """generate-video keeps its request as one object (the API's shape), with plain optional fields."""
    flow = load_flow_from_entrypoint(f"{ROOT / 'flows/generate_video.py'}:generate_video")
    schema = parameter_schema(flow).model_dump()
    fields = schema["properties"]
    assert set(fields) == {"request", "callback_url", "budget_usd"}
    for name, field in fields.items():
        assert field.get("description"), name
        assert "<" not in field["description"], name
        assert field.get("title", name) != name, name
    assert "anyOf" not in fields["callback_url"]
    assert "anyOf" not in fields["budget_usd"]
