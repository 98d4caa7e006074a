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
        "campaign-report",
        "sweep-inbox",
    }
    (schedule,) = built["sweep-inbox"].schedules
    assert schedule.active is False
    assert schedule.schedule.cron == "*/15 * * * *"
    assert not built["generate-video"].schedules


def test_campaign_forms_describe_their_fields() -> None:
    for entry, model in (
        ("flows/run_campaign.py:run_campaign", "CampaignParams"),
        ("flows/campaign_report.py:campaign_report", "ReportParams"),
        ("flows/sweep_inbox.py:sweep_inbox", "InboxParams"),
    ):
        path, func = entry.split(":")
        schema = parameter_schema(load_flow_from_entrypoint(f"{ROOT / path}:{func}")).model_dump()
        fields = schema["definitions"][model]["properties"]
        assert fields
        assert all(f.get("description") for f in fields.values()), (model, fields)
