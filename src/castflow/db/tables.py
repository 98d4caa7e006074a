"""SQLAlchemy 2 tables of castflow; portable between SQLite and PostgreSQL."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends (SQLite drops the zone otherwise)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class StageStatus(enum.StrEnum):
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    # A submit was sent and its answer lost: the provider may have created (and bill) a job whose id
    # nobody knows. Nothing submits this stage again until ``castflow stages resolve`` says how.
    unknown = "unknown"


class VideoStatus(enum.StrEnum):
    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    skipped = "skipped"


class CampaignStatus(enum.StrEnum):
    pending = "pending"
    running = "running"
    finished = "finished"
    failed = "failed"


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSONType}


def _enum(e: type[enum.Enum]) -> sa.Enum:
    return sa.Enum(e, native_enum=False, length=16, values_callable=lambda x: [m.value for m in x])


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Project(TimestampMixin, Base):
    __tablename__ = "project"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    title: Mapped[str] = mapped_column(sa.String(200))
    team: Mapped[str | None] = mapped_column(sa.String(200))
    owner: Mapped[str | None] = mapped_column(sa.String(200))


class Actor(TimestampMixin, Base):
    __tablename__ = "actor"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    key: Mapped[str] = mapped_column(sa.String(64), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    image_key: Mapped[str] = mapped_column(sa.String(500))
    image_hash: Mapped[str] = mapped_column(sa.String(64))
    voice_provider: Mapped[str] = mapped_column(sa.String(64))
    voice_model: Mapped[str] = mapped_column(sa.String(200))
    voice_id: Mapped[str] = mapped_column(sa.String(200))
    # Where the mouth is, as fractions of the portrait (x, y, width); only known for drawn portraits.
    mouth: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    defaults: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)

    variants: Mapped[list[ImageVariant]] = relationship(back_populates="actor", lazy="raise")


class ImageVariant(TimestampMixin, Base):
    __tablename__ = "image_variant"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    actor_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("actor.id", ondelete="CASCADE"), index=True)
    prompt: Mapped[str] = mapped_column(sa.Text)
    seed: Mapped[int] = mapped_column(sa.BigInteger)
    strength: Mapped[float | None]
    provider: Mapped[str] = mapped_column(sa.String(64))
    model: Mapped[str] = mapped_column(sa.String(200))
    stage_key: Mapped[str] = mapped_column(sa.String(64), unique=True)
    image_key: Mapped[str] = mapped_column(sa.String(500))
    image_hash: Mapped[str] = mapped_column(sa.String(64))
    cost_usd: Mapped[float] = mapped_column(default=0.0)

    actor: Mapped[Actor] = relationship(back_populates="variants", lazy="raise")


class Campaign(TimestampMixin, Base):
    __tablename__ = "campaign"
    __table_args__ = (sa.UniqueConstraint("name", "sheet_hash", name="uq_campaign_name_sheet"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    project_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("project.id", ondelete="SET NULL"))
    name: Mapped[str] = mapped_column(sa.String(200))
    sheet_name: Mapped[str] = mapped_column(sa.String(500))
    sheet_hash: Mapped[str] = mapped_column(sa.String(64))
    status: Mapped[CampaignStatus] = mapped_column(_enum(CampaignStatus), default=CampaignStatus.pending)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    budget_usd: Mapped[float | None]
    totals: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    finished_at: Mapped[datetime | None]


class Approval(Base):
    """A person's decision on a row of a campaign, made on its preview: approved rows are rendered in
    full (``--approved-only``, or the run that paused for approval), rejected ones are not."""

    __tablename__ = "approval"
    __table_args__ = (sa.UniqueConstraint("campaign_id", "row_id", name="uq_approval_campaign_row"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    campaign_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("campaign.id", ondelete="CASCADE"), index=True
    )
    row_id: Mapped[str] = mapped_column(sa.String(200))
    decision: Mapped[str] = mapped_column(sa.String(16))  # approved | rejected
    reason: Mapped[str | None] = mapped_column(sa.String(500))
    source: Mapped[str] = mapped_column(sa.String(32))  # cli | file | prefect
    decided_at: Mapped[datetime] = mapped_column(default=utcnow)


class Take(Base):
    """A new take of one stage of a campaign's row (castflow campaign reroll): its seed, why, and what it
    cost once made. The earlier take stays (its stage run, and the row's video as it was)."""

    __tablename__ = "take"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    campaign_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("campaign.id", ondelete="CASCADE"), index=True
    )
    row_id: Mapped[str] = mapped_column(sa.String(200))
    stage: Mapped[str] = mapped_column(sa.String(16))  # scene | speech | lipsync
    seed: Mapped[int] = mapped_column(sa.BigInteger)
    reason: Mapped[str] = mapped_column(sa.String(500))
    kept_key: Mapped[str | None] = mapped_column(sa.String(500))  # the video before this take
    stage_key: Mapped[str | None] = mapped_column(sa.String(200))  # the take's stage, once made
    cost_usd: Mapped[float | None]  # what the take cost, once made
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BudgetHold(Base):
    """Money a row of a campaign holds against the campaign's budget while it runs (castflow.budget):
    a paid stage starts only if the ledger's spend plus every hold fits the cap. A row's hold is dropped
    when it ends, and replaced when it starts again (a worker died with it)."""

    __tablename__ = "budget_hold"
    __table_args__ = (sa.UniqueConstraint("campaign_id", "holder", name="uq_budget_hold_campaign_holder"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    campaign_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("campaign.id", ondelete="CASCADE"), index=True
    )
    holder: Mapped[str] = mapped_column(sa.String(200))  # the row id
    amount_usd: Mapped[float] = mapped_column(default=0.0)
    owner: Mapped[str | None] = mapped_column(sa.String(200))  # the process (castflow.claims.me())
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class CampaignChunk(Base):
    """A slice of a campaign's rows run as one flow run of the campaign-chunk deployment on a work pool.
    Its owner renews ``lease_until`` while it runs; the campaign's run starts it again when the lease
    lapses (the worker or its machine died) or its flow run ended without finishing it."""

    __tablename__ = "campaign_chunk"
    __table_args__ = (sa.UniqueConstraint("campaign_id", "seq", name="uq_campaign_chunk_campaign_seq"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    campaign_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("campaign.id", ondelete="CASCADE"), index=True
    )
    seq: Mapped[int]
    row_ids: Mapped[list[str]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(sa.String(16), default="pending")  # pending|running|done|lost
    attempts: Mapped[int] = mapped_column(default=0)
    flow_run_id: Mapped[str | None] = mapped_column(sa.String(64))
    owner: Mapped[str | None] = mapped_column(sa.String(200))
    lease_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Video(TimestampMixin, Base):
    __tablename__ = "video"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    # One row per (campaign, row id); single videos use a key derived from their inputs.
    request_key: Mapped[str] = mapped_column(sa.String(200), unique=True)
    campaign_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("campaign.id", ondelete="CASCADE"), index=True
    )
    row_id: Mapped[str | None] = mapped_column(sa.String(200))
    actor_key: Mapped[str] = mapped_column(sa.String(64), index=True)
    script: Mapped[str | None] = mapped_column(sa.Text)
    audio_source: Mapped[str | None] = mapped_column(sa.String(1000))
    scene: Mapped[str | None] = mapped_column(sa.Text)
    image_variant_id: Mapped[uuid.UUID | None]
    resolution: Mapped[str] = mapped_column(sa.String(16))
    seed: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    status: Mapped[VideoStatus] = mapped_column(_enum(VideoStatus), default=VideoStatus.pending)
    failed_stage: Mapped[str | None] = mapped_column(sa.String(32))
    error: Mapped[str | None] = mapped_column(sa.Text)
    image_key: Mapped[str | None] = mapped_column(sa.String(500))
    audio_key: Mapped[str | None] = mapped_column(sa.String(500))
    video_key: Mapped[str | None] = mapped_column(sa.String(500))
    video_url: Mapped[str | None] = mapped_column(sa.String(2000))
    captions_key: Mapped[str | None] = mapped_column(sa.String(500))
    audio_seconds: Mapped[float | None]
    video_seconds: Mapped[float | None]
    cost_usd: Mapped[float] = mapped_column(default=0.0)
    extra: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # The export profiles' files (castflow.models.Output, as dicts): format, status, key, url, seconds, error.
    outputs: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)
    warnings: Mapped[list[str] | None] = mapped_column(JSONType)  # what its checks noticed; not failures
    finished_at: Mapped[datetime | None]


class StageRun(TimestampMixin, Base):
    __tablename__ = "stage_run"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    stage_key: Mapped[str] = mapped_column(sa.String(64), unique=True)
    stage: Mapped[str] = mapped_column(sa.String(32), index=True)
    provider: Mapped[str] = mapped_column(sa.String(64))
    model: Mapped[str] = mapped_column(sa.String(200))
    request_id: Mapped[str | None] = mapped_column(sa.String(200))
    status: Mapped[StageStatus] = mapped_column(_enum(StageStatus), default=StageStatus.running)
    attempts: Mapped[int] = mapped_column(default=0)
    billed_units: Mapped[float] = mapped_column(default=0.0)
    unit: Mapped[str | None] = mapped_column(sa.String(32))
    cost_usd: Mapped[float] = mapped_column(default=0.0)
    queue_seconds: Mapped[float | None]
    run_seconds: Mapped[float | None]
    output_key: Mapped[str | None] = mapped_column(sa.String(500))
    output_hash: Mapped[str | None] = mapped_column(sa.String(64))
    meta: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    error: Mapped[str | None] = mapped_column(sa.Text)
    # The claim (castflow.claims): which process runs the stage, and until when its lease holds unless
    # renewed. A claim is taken over only once its owner is dead or its lease has lapsed.
    owner: Mapped[str | None] = mapped_column(sa.String(200))
    lease_until: Mapped[datetime | None]
    # Set just before a submit is sent, cleared when it fails for sure: with no request id beside it, a
    # job may exist that only the owner's journal (castflow.journal) can name.
    sending_at: Mapped[datetime | None]
    # The campaign whose run paid for the provider job (spend is counted once, by the payer).
    campaign_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, index=True)


class WebhookStatus(enum.StrEnum):
    completed = "completed"
    failed = "failed"


class WebhookEvent(Base):
    """One verified completion callback; (provider, delivery_id) is unique so replays are refused."""

    __tablename__ = "webhook_event"
    __table_args__ = (
        sa.UniqueConstraint("provider", "delivery_id", name="uq_webhook_event_provider_delivery_id"),
        sa.Index("ix_webhook_event_request_id", "request_id", "provider"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    # The vendor's name (castflow.providers.VENDORS). Migration 0002 made it a VARCHAR(16) (a
    # non-native enum, no CHECK constraint), so a new vendor needs no migration.
    provider: Mapped[str] = mapped_column(sa.String(16))
    # The vendor's delivery id (fal: SHA-256 of the signed message; WaveSpeed: the webhook-id header).
    delivery_id: Mapped[str] = mapped_column(sa.String(200))
    # The provider's job id (fal request_id, WaveSpeed prediction id).
    request_id: Mapped[str] = mapped_column(sa.String(200))
    status: Mapped[WebhookStatus] = mapped_column(_enum(WebhookStatus))
    error: Mapped[str | None] = mapped_column(sa.Text)
    # What the provider's result endpoint would return (fal: model output; WaveSpeed: the prediction).
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class VideoStage(Base):
    """Which stages a video used and what it paid for each (0 when the stage was reused): the link that
    lets reports split a campaign's spend by stage, provider and actor."""

    __tablename__ = "video_stage"
    __table_args__ = (sa.UniqueConstraint("video_id", "stage", name="uq_video_stage_video_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    video_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("video.id", ondelete="CASCADE"))
    stage: Mapped[str] = mapped_column(sa.String(32))
    stage_key: Mapped[str] = mapped_column(sa.String(64), index=True)
    reused: Mapped[bool] = mapped_column(default=False)
    cost_usd: Mapped[float] = mapped_column(default=0.0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
