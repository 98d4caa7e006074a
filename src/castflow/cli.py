"""The ``castflow`` command."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
import typer.core
from pydantic import ValidationError

from castflow.redact import format_exception, install_log_redaction, redact, register_settings_secrets
from castflow.settings import Settings, get_settings, reset_settings

if TYPE_CHECKING:
    from castflow.models import VideoResult
    from castflow.runtime import Runtime


def _flag_without_type(display: Callable[..., str | None]) -> Callable[..., str | None]:
    """Typer's help shows ``<bool>`` after an on/off flag (``--dry-run <bool>``), as if it took a value:
    a flag shows no type."""

    def shown(self: Any, ctx: Any) -> str | None:
        return "" if getattr(self, "is_flag", False) else display(self, ctx)

    return shown


if hasattr(typer.core, "TyperOption") and hasattr(typer.core.TyperOption, "display_type_rich"):
    typer.core.TyperOption.display_type_rich = _flag_without_type(  # type: ignore[method-assign]
        typer.core.TyperOption.display_type_rich
    )

app = typer.Typer(
    help="castflow: lip-synced AI-actor videos from scripts and campaign sheets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
actors_app = typer.Typer(help="The actor library.", no_args_is_help=True)
variant_app = typer.Typer(help="Image variants (an actor's portrait in a scene).", no_args_is_help=True)
db_app = typer.Typer(help="castflow's database.", no_args_is_help=True)
webhooks_app = typer.Typer(help="Signed completion callbacks from the providers.", no_args_is_help=True)
app.add_typer(actors_app, name="actors")
app.add_typer(variant_app, name="variant")
app.add_typer(db_app, name="db")
app.add_typer(webhooks_app, name="webhooks")
campaign_app = typer.Typer(help="Campaign sheets: validate, estimate and run.", no_args_is_help=True)
app.add_typer(campaign_app, name="campaign")
stages_app = typer.Typer(
    help="Paid stages whose submit outcome is unknown: list them, and resolve them.", no_args_is_help=True
)
app.add_typer(stages_app, name="stages")

T = TypeVar("T")


class CliError(Exception):
    """Reported as one line on stderr, exit status 2."""


@app.callback()
def _main(
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Data folder (default: $CASTFLOW_DATA_DIR or ./.castflow)."),
    ] = None,
) -> None:
    install_log_redaction()  # before anything logs: Prefect, httpx and provider errors quote URLs and keys
    if data_dir is not None:
        os.environ["CASTFLOW_DATA_DIR"] = str(data_dir)
        reset_settings()


def _settings() -> Settings:
    try:
        settings = get_settings()
    except ValidationError as exc:
        problems = "; ".join(
            ": ".join(filter(None, (".".join(map(str, e["loc"])), e["msg"].removeprefix("Value error, "))))
            for e in exc.errors()
        )
        raise CliError(f"invalid configuration: {problems}") from exc
    register_settings_secrets(settings)
    return settings


def _runtime() -> Runtime:
    from sqlalchemy import exc as sa_exc

    from castflow.db.retry import describe_error
    from castflow.runtime import ConfigError, get_runtime

    settings = _settings()
    try:
        return get_runtime()
    except ConfigError as exc:
        raise CliError(str(exc)) from exc
    except sa_exc.DBAPIError as exc:  # the database cannot be reached or opened at all
        raise CliError(describe_error(exc, settings.database_url)) from None


def prefect_environment(settings: Settings) -> None:
    """Prefect's settings for in-process flow runs, unless the user set them (castflow.prefect_env)."""
    from castflow.prefect_env import prefect_environment as apply

    apply(settings.data_dir, settings.pipeline.max_workers)


_OWN_PROCESS = False  # run as the console script (the process ends with the command), not in a test


@contextmanager
def _flows() -> Iterator[None]:
    """Around in-process flow runs: castflow's Prefect defaults and, when no Prefect API is configured,
    a temporary server for the rest of the command."""
    prefect_environment(_settings())
    from castflow.prefect_env import ensure_prefect_api

    ensure_prefect_api()
    yield


def _run(fn: Callable[[], T]) -> T:
    from castflow.actors import ActorFileError
    from castflow.datadir import DataDirError
    from castflow.db.retry import DatabaseUnavailable
    from castflow.journal import JournalError
    from castflow.pipeline import UserError

    try:
        return fn()
    except (UserError, ActorFileError, CliError, DatabaseUnavailable, DataDirError, JournalError) as exc:
        typer.echo(redact(f"error: {exc}"), err=True)
        raise typer.Exit(2) from None


# ---- video --------------------------------------------------------------------------------------------


@app.command()
def video(
    actor: Annotated[str, typer.Argument(help="Actor key.")],
    script: Annotated[str | None, typer.Option("--script", "-s", help="What the actor says.")] = None,
    audio: Annotated[
        Path | None,
        typer.Option(
            "--audio",
            "-a",
            help="Audio file to lip-sync instead (--script then gives its words, for captions).",
        ),
    ] = None,
    scene: Annotated[str | None, typer.Option("--scene", help="Scene prompt for the image edit.")] = None,
    variant: Annotated[str | None, typer.Option("--variant", help="Reuse this image variant id.")] = None,
    resolution: Annotated[str, typer.Option("--resolution", "-r", help="480p or 720p.")] = "480p",
    seed: Annotated[int, typer.Option("--seed", help="Seed for the edit and lip-sync.")] = 0,
    captions: Annotated[
        bool,
        typer.Option(
            "--captions", help="Burn the script in as captions (clean style); writes .srt and .ass."
        ),
    ] = False,
    caption_style: Annotated[
        str | None,
        typer.Option(
            "--caption-style",
            help="Captions in this style: clean, bold (a few big words at a time) or karaoke (the spoken word lit).",
        ),
    ] = None,
) -> None:
    """Make one video of ACTOR saying --script (or playing --audio)."""
    from castflow.models import VideoRequest

    def go() -> None:
        try:
            request = VideoRequest(
                actor=actor,
                script=script,
                audio=str(audio) if audio else None,
                scene=scene,
                image_variant_id=variant,
                resolution=resolution,
                seed=seed,
                captions=caption_style or captions,
            )
        except ValidationError as exc:
            raise CliError(_validation_message(exc)) from exc
        for option, why in request.ignored():  # the words a sheet uses for the same row
            typer.echo(f"warning: --{option}: {why}", err=True)
        result = _generate(request)
        _print_result(result)
        if result.status != "succeeded":
            raise typer.Exit(1)

    _run(go)


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _generate(request: Any) -> VideoResult:
    """Validate (nothing written on bad input), then run the generate_video flow in this process."""
    from castflow import pipeline
    from castflow.db import queries
    from castflow.models import VideoResult

    rt = _runtime()
    prepared = pipeline.prepare_video(rt, request)
    with _flows():
        from flows.generate_video import generate_video

        state = generate_video(request, return_state=True)
    if state.is_completed():
        result = state.result()
        assert isinstance(result, VideoResult)
        return result
    with rt.session() as s:
        row = queries.get_video(s, request_key=prepared.request_key)
        return VideoResult(
            video_id=str(row.id) if row else "-",
            actor=request.actor,
            status="failed",
            failed_stage=row.failed_stage if row else None,
            error=(row.error if row else None) or state.message,
        )


def _print_result(result: VideoResult) -> None:
    if result.status == "succeeded":
        reused = f", {result.reused_stages} stage(s) reused" if result.reused_stages else ""
        typer.echo(
            f"ok   {result.actor:<8} {result.video_seconds or 0:5.2f} s  ${result.cost_usd:.4f}{reused}  "
            f"{result.video_url}"
        )
        for output in result.outputs:  # the export profiles (castflow.finish)
            if output.status == "succeeded":
                typer.echo(f"     {output.format:<8} {output.seconds or 0:5.2f} s  {output.url}")
            else:
                typer.echo(redact(f"     {output.format:<8} FAILED: {output.error}"))
    else:
        typer.echo(redact(f"FAIL {result.actor:<8} at {result.failed_stage}: {result.error}"))


# ---- demo ---------------------------------------------------------------------------------------------

DEMO_SCRIPTS = [
    (
        "maya",
        "Okay, real talk. I tried this serum for two weeks and my skin has never looked this good.",
        "on a sunny beach at golden hour",
    ),
    (
        "leo",
        "Mornings used to be chaos. Now I make a proper coffee in thirty seconds. Game changer.",
        "in a cosy kitchen with morning light",
    ),
]


@app.command()
def demo() -> None:
    """Render the sample videos for the sample actors on the embedded defaults."""

    def go() -> None:
        from castflow.actors import ensure_sample_actors
        from castflow.brand import make_sample_kit
        from castflow.models import VideoRequest

        rt = _runtime()
        ensure_sample_actors(rt)
        audio = _demo_audio(rt)
        kit = make_sample_kit(rt.settings.data_dir / "samples" / "brand")
        (maya, maya_says, beach), (leo, leo_says, kitchen) = DEMO_SCRIPTS
        requests = [
            # Every caption style; the first wears the sample brand kit in two export profiles.
            VideoRequest(
                actor=maya,
                script=maya_says,
                scene=beach,
                captions="bold",
                brand=str(kit),
                formats=("tiktok", "square"),
            ),
            VideoRequest(actor=leo, script=leo_says, scene=kitchen, captions="karaoke"),
            # An uploaded voice-over with its script: its words are aligned to it for the captions.
            VideoRequest(
                actor="ava",
                audio=str(audio),
                script=DEMO_VOICEOVER,
                scene="in a modern office with plants",
                captions="clean",
            ),
        ]
        typer.echo(f"castflow demo: {len(requests)} videos, data in {rt.settings.data_dir}")
        failed = 0
        for req in requests:
            result = _generate(req)
            _print_result(result)
            failed += result.status != "succeeded"
        typer.echo(f"videos are in {rt.storage.location} under videos/")
        if failed:
            raise typer.Exit(1)

    _run(go)


DEMO_VOICEOVER = "This is an uploaded voice-over. Castflow lip-syncs any audio you give it."


def _demo_audio(rt: Runtime) -> Path:
    """An 'uploaded' audio file for the demo's audio-source video (spoken by eSpeak NG)."""
    import shutil
    import tempfile

    from castflow.models import Voice
    from castflow.providers.local import EspeakSpeech

    dest = rt.settings.data_dir / "samples" / "ava-voiceover.wav"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            local = rt.speech["local"]
            assert isinstance(local, EspeakSpeech)
            made = local.synthesize(
                DEMO_VOICEOVER,
                Voice(provider="local", model="espeak-ng", voice_id="en-us+f2"),
                workdir=Path(tmp),
            )
            shutil.copyfile(made.path, dest)
    return dest


# ---- actors -------------------------------------------------------------------------------------------


@actors_app.command("import")
def actors_import(file: Annotated[Path, typer.Argument(help="Actor file (.yaml, .yml or .csv).")]) -> None:
    """Import (or update) the actors of FILE."""

    def go() -> None:
        from castflow.actors import import_actors, parse_actor_file

        if not file.is_file():
            raise CliError(f"actor file {file} does not exist")
        specs = parse_actor_file(file)
        keys = import_actors(_runtime(), specs, base_dir=file.resolve().parent)
        typer.echo(f"imported {len(keys)} actor(s): {', '.join(keys)}")

    _run(go)


@actors_app.command("samples")
def actors_samples() -> None:
    """Add the three drawn sample actors (maya, leo, ava) with eSpeak NG voices."""

    def go() -> None:
        from castflow.actors import SAMPLE_ACTORS, ensure_sample_actors

        ensure_sample_actors(_runtime())
        typer.echo(f"sample actors ready: {', '.join(a.key for a in SAMPLE_ACTORS)}")

    _run(go)


@actors_app.command("list")
def actors_list() -> None:
    """List the actors."""

    def go() -> None:
        from castflow.db import queries

        rt = _runtime()
        with rt.session() as s:
            rows = queries.list_actors(s)
            if not rows:
                typer.echo("no actors yet: `castflow actors import FILE` or `castflow actors samples`")
            for a in rows:
                typer.echo(
                    f"{a.key:<12} {a.name:<20} {a.voice_provider}/{a.voice_model}:{a.voice_id}  {a.image_key}"
                )

    _run(go)


# ---- stages -------------------------------------------------------------------------------------------


@stages_app.command("unknown")
def stages_unknown() -> None:
    """List the stages held because a submit was sent and its answer lost (a job may exist and bill)."""

    def go() -> None:
        from castflow.db import queries

        rt = _runtime()
        rows = rt.db_session(lambda s: list(queries.unknown_stage_runs(s)))
        if not rows:
            typer.echo("no stage has an unknown submit outcome")
            return
        for run in rows:
            when = run.sending_at or run.updated_at
            typer.echo(
                f"{run.stage_key}  {run.stage:<13} {run.provider}/{run.model}  sent {when:%Y-%m-%d %H:%M:%S}Z"
            )
        typer.echo(
            f"{len(rows)} stage(s): find each job in the provider's dashboard (by model and time), then "
            "`castflow stages resolve KEY --request-id ID` (the next run fetches that job), or "
            "`castflow stages resolve KEY --resubmit` (the next run submits again: it may pay twice)"
        )

    _run(go)


@stages_app.command("resolve")
def stages_resolve(
    keys: Annotated[
        list[str] | None, typer.Argument(help="Stage keys (from `castflow stages unknown`).")
    ] = None,
    request_id: Annotated[
        str | None,
        typer.Option("--request-id", help="The job's request id, found in the provider's dashboard."),
    ] = None,
    resubmit: Annotated[
        bool, typer.Option("--resubmit", help="Submit again on the next run (a lost job may bill twice).")
    ] = False,
    all_unknown: Annotated[
        bool, typer.Option("--all", help="Every stage listed by `stages unknown`.")
    ] = False,
) -> None:
    """Settle stages with an unknown submit outcome: adopt the job you found, or submit again."""

    def go() -> None:
        from castflow.db import queries

        if (request_id is None) == (not resubmit):
            raise CliError("give --request-id ID (the job you found) or --resubmit (pay again), not both")
        rt = _runtime()
        chosen = list(keys or [])
        if all_unknown:
            chosen += [r.stage_key for r in rt.db_session(lambda s: list(queries.unknown_stage_runs(s)))]
        if not chosen:
            raise CliError("name the stage keys, or give --all")
        if request_id is not None and len(chosen) != 1:
            raise CliError("--request-id names one job: give exactly one stage key")
        for key in dict.fromkeys(chosen):
            done = rt.db_session(
                lambda s, key=key: queries.resolve_stage_run(s, stage_key=key, request_id=request_id)  # type: ignore[misc]
            )
            if not done:
                now = rt.db_session(lambda s, key=key: queries.get_stage_run(s, stage_key=key))  # type: ignore[misc]
                if now is not None and request_id is not None and now.request_id == request_id:
                    typer.echo(f"{key}: already attached to job {request_id}; nothing to do")
                    continue
                state = "" if now is None else f" (it is {now.status.value}, job {now.request_id or 'none'})"
                raise CliError(
                    f"stage {key} is not waiting for a resolution{state}: a resolve or this host's submit "
                    "journal may have settled it (see `castflow stages unknown`)"
                )
            what = f"will fetch job {request_id}" if request_id else "will be submitted again (may pay twice)"
            typer.echo(f"{key}: {what} on the next run")

    _run(go)


# ---- variants -----------------------------------------------------------------------------------------


@variant_app.command("create")
def variant_create(
    actor: Annotated[str, typer.Argument(help="Actor key.")],
    prompt: Annotated[str, typer.Argument(help="Scene prompt.")],
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**31 - 1)] = 0,
) -> None:
    """Create an image variant of ACTOR in the scene PROMPT."""

    def go() -> None:
        from castflow import pipeline

        rt = _runtime()
        pipeline.actor_ref(rt, actor)  # unknown actor: one line, before Prefect starts
        if not prompt.strip():
            raise CliError("prompt is empty")
        with _flows():
            from flows.create_image_variant import create_image_variant

            result = create_image_variant(actor=actor, prompt=prompt, seed=seed)
        typer.echo(
            f"{result.variant_id}  {result.actor}  {result.image_url}{'  (reused)' if result.reused else ''}"
        )

    _run(go)


@variant_app.command("list")
def variant_list(actor: Annotated[str, typer.Option("--actor", help="Actor key.")]) -> None:
    """List an actor's image variants, newest first."""

    def go() -> None:
        from castflow import pipeline
        from castflow.db import queries

        rt = _runtime()
        pipeline.actor_ref(rt, actor)
        with rt.session() as s:
            rows = queries.list_image_variants(s, actor_key=actor)
            if not rows:
                typer.echo(f"no variants for {actor}")
            for v in rows:
                typer.echo(f"{v.id}  seed={v.seed:<6} {v.prompt[:60]!r}  {rt.storage.url(v.image_key)}")

    _run(go)


# ---- db -----------------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Migrate the database to REVISION (default: the latest)."""

    def go() -> None:
        from castflow.datadir import check_data_dir
        from castflow.db import migrate
        from castflow.db.session import get_engine

        settings = _settings()
        check_data_dir(settings.data_dir)
        engine = get_engine(settings.database_url)
        migrate.upgrade(engine, revision)
        typer.echo(f"database at revision {migrate.current_revision(engine)}")

    _run(go)


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target revision, e.g. base.")]) -> None:
    """Migrate the database down to REVISION."""

    def go() -> None:
        from castflow.db import migrate
        from castflow.db.session import get_engine

        engine = get_engine(_settings().database_url)
        migrate.downgrade(engine, revision)
        typer.echo(f"database at revision {migrate.current_revision(engine) or 'base'}")

    _run(go)


@db_app.command("current")
def db_current() -> None:
    """Show the database's revision."""

    def go() -> None:
        from castflow.db import migrate
        from castflow.db.session import get_engine

        engine = get_engine(_settings().database_url)
        typer.echo(f"{migrate.current_revision(engine) or 'base'} (head: {migrate.head_revision()})")

    _run(go)


# ---- webhooks -----------------------------------------------------------------------------------------


@webhooks_app.command("serve")
def webhooks_serve(
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8787,
) -> None:
    """Receive the providers' completion webhooks, verify their signatures and record them."""

    def go() -> None:
        import logging

        import uvicorn

        from castflow.providers.vendors import title, vendors
        from castflow.webhooks.app import create_app, webhook_urls

        rt = _runtime()
        hooks = rt.settings.webhooks
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        install_log_redaction()  # the new root handler too
        urls = webhook_urls(hooks, local_base=f"http://{host}:{port}")
        width = max(len(title(name)) for name in urls)
        for name, url in urls.items():
            typer.echo(f"{title(name) + ' webhook URL:':<{width + 14}}{url}")
        if not hooks.public_url:
            typer.echo("note: CASTFLOW_WEBHOOKS__PUBLIC_URL is not set; providers cannot reach a local URL")
        for vendor in vendors():
            for problem in vendor.webhook_problems(rt.settings, online=False):
                typer.echo(f"note: {problem}")
        sys.stdout.flush()
        uvicorn.run(
            create_app(rt.settings, engine=rt.engine),
            host=host,
            port=port,
            log_level="info",
            ws="none",
            lifespan="off",
            proxy_headers=False,
        )

    _run(go)


# ---- campaigns ----------------------------------------------------------------------------------------

SheetArg = Annotated[
    Path, typer.Argument(help="The campaign sheet (CSV) or matrix file (YAML).", show_default=False)
]


BrandOption = Annotated[
    Path | None,
    typer.Option(
        "--brand", help="Brand kit (YAML) for the rows whose brand column is empty: logo, colours, music..."
    ),
]


def _load_sheet(path: Path, brand: Path | None = None) -> Any:
    from castflow import campaigns

    if not path.is_file():
        raise CliError(f"sheet {path} does not exist")
    if brand is not None and not brand.is_file():
        raise CliError(f"brand kit {brand} does not exist")
    return campaigns.load_sheet(_runtime(), path, brand=brand)


def _print_problems(sheet: Any, *, skip_invalid: bool) -> None:
    for problem in sheet.errors:
        typer.echo(redact(f"error: {problem}"), err=True)
    for problem in sheet.warnings:
        typer.echo(redact(f"warning: {problem}"), err=True)
    if sheet.sheet_errors or (sheet.errors and not skip_invalid):
        raise CliError(
            f"{sheet.name}: {len(sheet.errors)} error(s)"
            + (
                f" in {len(sheet.invalid_rows)} of {sheet.total_rows} row(s)"
                if sheet.invalid_rows and not sheet.unreadable
                else ""
            )
            + "; nothing was run"
            + ("" if sheet.sheet_errors else " (--skip-invalid runs the valid rows)")
        )


@campaign_app.command("validate")
def campaign_validate(sheet: SheetArg, brand: BrandOption = None) -> None:
    """Check every row of a sheet (actors, scripts, audio files, ids, limits) without running anything."""

    def go() -> None:
        loaded = _load_sheet(sheet, brand)
        _print_problems(loaded, skip_invalid=False)
        typer.echo(f"{loaded.name}: {len(loaded.rows)} row(s) ok")

    _run(go)


class _SpeechCost:
    """The speech of a sheet's estimates: jobs on a first run, what they cost here and on the real
    providers."""

    def __init__(self) -> None:
        self.jobs = 0
        self.here: list[float] = []
        self.real: list[float] = []

    def add(self, estimates: list[Any]) -> None:
        for e in estimates:
            self.jobs += sum(
                1 for unit in e.first_stages if unit.startswith("speech") and unit != "speech_join"
            )
            self.here.append(e.speech_usd)
            self.real += [usd for unit, usd in e.real_by_stage.items() if unit.startswith("speech")]

    def __str__(self) -> str:
        return (
            f"{self.jobs} speech job(s), ${math.fsum(self.here):.4f} here, "
            f"${math.fsum(self.real):.4f} on the real providers"
        )


@campaign_app.command("preview")
def campaign_preview(
    sheet: SheetArg,
    name: Annotated[
        str | None, typer.Option("--name", help="Campaign name (default: the file's, or the matrix's).")
    ] = None,
    budget: Annotated[
        float | None, typer.Option("--budget", min=0.01, help="Never start a paid stage past this (USD).")
    ] = None,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Preview the valid rows, report the others.")
    ] = False,
    concurrency: Annotated[int | None, typer.Option("--concurrency", min=1, help="Rows in flight.")] = None,
    brand: BrandOption = None,
) -> None:
    """Preview every row before paying for its lip-sync: the scene and the voice are made (and kept for
    the render), the lip-sync is castflow's free local one; writes a review page to approve or reject
    each take, then `campaign approve` and `campaign run --approved-only`."""

    def go() -> None:
        loaded = _load_sheet(sheet, brand)
        _print_problems(loaded, skip_invalid=skip_invalid)
        _run_campaign_flow(
            sheet,
            name,
            budget,
            skip_invalid,
            concurrency,
            total=loaded.total_rows,
            brand=brand,
            mode="preview",
        )

    _run(go)


@campaign_app.command("approve")
def campaign_approve(
    campaign: Annotated[
        str, typer.Argument(help="Campaign name (its newest sheet) or id.", show_default=False)
    ],
    rows: Annotated[
        str | None, typer.Option("--rows", help="Row ids to approve, separated by commas.")
    ] = None,
    reject: Annotated[
        str | None, typer.Option("--reject", help="Row ids to reject, separated by commas.")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="An approvals CSV (row_id,decision,reason): the review page's."),
    ] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why (kept with each decision).")] = "",
) -> None:
    """Approve or reject rows of a campaign on their previews; `campaign run --approved-only` (or a run
    paused for approval) then renders the approved ones."""

    def go() -> None:
        from castflow import campaigns, review
        from castflow.db import queries

        if not (rows or reject or file):
            raise CliError("give --rows, --reject or --file")
        rt = _runtime()
        found = rt.db_session(
            lambda s: queries.find_campaign(s, name_or_id=campaign), what="finding the campaign"
        )
        if found is None or found.name.endswith(campaigns.PREVIEW_SUFFIX):
            raise CliError(f"no campaign {campaign!r} (`castflow campaign preview SHEET` makes its previews)")
        preview = rt.db_session(
            lambda s: queries.find_campaign(s, name_or_id=campaigns.preview_name(found.name)),
            what="finding previews",
        )

        def rows_of(s: Any) -> set[str]:
            ids = [c.id for c in (found, preview) if c is not None]
            return {v.row_id for i in ids for v in queries.campaign_videos(s, campaign_id=i) if v.row_id}

        known = rt.db_session(rows_of, what="reading the campaign's rows")
        decisions: dict[str, tuple[str, str]] = {}
        if file is not None:
            try:
                decisions |= review.read_approvals(file, known)
            except review.ApprovalsError as exc:
                raise CliError(str(exc)) from None
        for text, decision in ((rows, "approved"), (reject, "rejected")):
            for row_id in (part.strip() for part in (text or "").split(",")):
                if not row_id:
                    continue
                if row_id not in known:
                    raise CliError(
                        f"{row_id!r} is not a row of campaign {found.name} (its rows: `castflow report`)"
                    )
                decisions[row_id] = (decision, reason)
        campaigns.record_approvals(rt, found.id, decisions, "file" if file else "cli")
        decided = campaigns.approvals(rt, found.id)
        approved = sum(d == "approved" for d in decided.values())
        typer.echo(
            f"{found.name}: {approved} approved, {len(decided) - approved} rejected, "
            f"{len(known - decided.keys())} undecided"
        )

    _run(go)


@campaign_app.command("reroll")
def campaign_reroll(
    campaign: Annotated[
        str, typer.Argument(help="Campaign name (its newest sheet) or id.", show_default=False)
    ],
    row: Annotated[str, typer.Argument(help="The row's id.", show_default=False)],
    stage: Annotated[str, typer.Option("--stage", help="scene, speech or lipsync.")],
    reason: Annotated[str, typer.Option("--reason", help="Why a new take (kept with it).")],
    seed: Annotated[
        int | None,
        typer.Option("--seed", min=0, max=2**31 - 1, help="The new take's seed (default: the next)."),
    ] = None,
) -> None:
    """Make a new take of one stage of a row: the take is recorded with its reason, the row's video is kept
    beside it as .takeN.mp4, and the next run of the campaign makes the take and re-renders only what
    depends on it (its spend is recorded with the take)."""

    def go() -> None:
        from castflow import campaigns, pipeline

        try:
            done = campaigns.reroll(_runtime(), campaign, row, stage, seed, reason)
        except pipeline.UserError as exc:
            raise CliError(str(exc)) from None
        kept = f"; the video so far is kept as {done['kept']}" if done["kept"] else ""
        typer.echo(
            f"{done['campaign']}: row {row}: a new {stage} take (seed {done['seed']}){kept}. Render it: "
            f"castflow campaign run {done['sheet']} --name {done['campaign']}"
        )

    _run(go)


@campaign_app.command("expand")
def campaign_expand(
    matrix_file: Annotated[Path, typer.Argument(help="The matrix file (YAML).", show_default=False)],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the sheet here (default: print it).")
    ] = None,
) -> None:
    """Expand a matrix file (hooks x bodies x actors x scenes ...) into the equivalent sheet, checked as
    a run would check it: review or edit it, then run either."""

    def go() -> None:
        from castflow import matrix

        if not matrix_file.is_file():
            raise CliError(f"matrix file {matrix_file} does not exist")
        loaded = _load_sheet(matrix_file)  # every row checked as a run checks it
        _print_problems(loaded, skip_invalid=False)
        expansion = matrix.expand(matrix_file, max_rows=_runtime().settings.campaign.max_rows)
        if expansion.matrix.brand and out is not None:  # the kit stays where it is: its path from the sheet
            column = expansion.columns.index("brand")
            kit = os.path.relpath(
                (matrix_file.parent / expansion.matrix.brand).resolve(), out.resolve().parent
            )
            for row in expansion.rows:
                row[column] = kit
        text = expansion.csv_text()
        if out is None:
            typer.echo(text, nl=False)
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        typer.echo(
            f"{matrix_file.name}: {len(expansion.rows)} row(s) of {expansion.combinations} combination(s) "
            f"-> {out}",
            err=True,
        )

    _run(go)


@campaign_app.command("run")
def campaign_run(
    sheet: SheetArg,
    name: Annotated[
        str | None, typer.Option("--name", help="Campaign name (default: the file name).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Estimate the cost only; no paid call.")] = False,
    budget: Annotated[
        float | None, typer.Option("--budget", min=0.01, help="Never start a paid stage past this (USD).")
    ] = None,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Run the valid rows, report the others.")
    ] = False,
    concurrency: Annotated[int | None, typer.Option("--concurrency", min=1, help="Rows in flight.")] = None,
    brand: BrandOption = None,
    approved_only: Annotated[
        bool, typer.Option("--approved-only", help="Render only the rows approved on their preview.")
    ] = False,
    pool: Annotated[
        str | None,
        typer.Option(
            "--pool",
            help="Run the rows on this Prefect work pool, in chunks its workers pick up (needs "
            "PREFECT_API_URL: the server the workers poll; default CASTFLOW_CAMPAIGN__WORK_POOL).",
        ),
    ] = None,
) -> None:
    """Run a campaign sheet: every row becomes a video (resumes a sheet run before)."""

    def go() -> None:
        from castflow import campaigns
        from castflow.estimates import RealPrices, budget_total, configured, real_total

        rt = _runtime()
        loaded = _load_sheet(sheet, brand)
        _print_problems(loaded, skip_invalid=skip_invalid)
        if dry_run:
            if loaded.default_name is not None:  # a matrix file
                typer.echo(f"{loaded.name}: expands to {len(loaded.rows)} row(s)")
            rows, totals, reals = 0, [], []
            said = _SpeechCost()
            for part in campaigns.iter_estimates(rt, loaded.rows):  # printed as they come: none kept
                typer.echo(
                    "\n".join(
                        f"row {e.row:<5} {e.row_id:<16} {e.actor:<10} ~{e.speech_seconds:5.1f} s  "
                        f"image ${e.image_usd:.3f}  speech ${e.speech_usd:.4f}  "
                        f"lip-sync ${e.lipsync_usd:.3f}  = ${e.total_usd:.4f}  real ${e.real_usd:.4f}"
                        + (f"  ({e.reused_stages} reused)" if e.reused_stages else "")
                        for e in part
                    )
                )
                rows += len(part)
                totals.append(budget_total(part))
                reals.append(real_total(part))
                said.add(part)
            here, there = math.fsum(totals), math.fsum(reals)
            typer.echo(f"estimate: ${here:.2f} for {rows} row(s) here ({configured(rt)})")
            typer.echo(
                f"on the real providers: ${there:.2f} ({RealPrices(rt).describe()}: a first run there, "
                "each shared stage paid once)"
                + ("; --budget applies to the first figure" if budget is not None else "")
            )
            if loaded.speech is not None:  # a matrix: what each way of speaking costs
                other = "parts" if loaded.speech == "whole" else "whole"
                alike = _SpeechCost()
                for part in campaigns.iter_estimates(rt, campaigns.load_sheet(rt, sheet, brand, other).rows):
                    alike.add(part)
                for mode, cost in sorted({loaded.speech: said, other: alike}.items(), reverse=True):
                    chosen = " (this matrix)" if mode == loaded.speech else ""
                    typer.echo(f"speech: {mode:<5} {cost}{chosen}")
            return
        _run_campaign_flow(
            sheet,
            name,
            budget,
            skip_invalid,
            concurrency,
            total=loaded.total_rows,
            brand=brand,
            approved_only=approved_only,
            pool=pool,
        )

    _run(go)


def _run_campaign_flow(
    sheet: Path,
    name: str | None,
    budget: float | None,
    skip_invalid: bool,
    concurrency: int | None,
    total: int,
    brand: Path | None = None,
    *,
    mode: str = "render",
    approved_only: bool = False,
    pool: str | None = None,
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from castflow import campaigns, interrupt

    if (pool or _settings().campaign.work_pool) and not os.environ.get("PREFECT_API_URL"):
        from prefect.settings import get_current_settings

        if not get_current_settings().api.url:
            raise CliError(
                "a work pool's workers poll a Prefect server: set PREFECT_API_URL to it (this command "
                "would otherwise start a temporary server no worker can see)"
            )

    counts = {"succeeded": 0, "failed": 0, "skipped": 0}
    resume = (
        f"castflow campaign {'preview' if mode == 'preview' else 'run'} {sheet}"
        + (f" --name {name}" if name else "")
        + (f" --brand {brand}" if brand else "")
        + (" --approved-only" if approved_only else "")
        + (f" --pool {pool}" if pool else "")
    )

    def first() -> None:
        sys.stderr.write(
            "\nstopping: no new row or paid stage starts, waits on provider jobs end (their ids are "
            "recorded); Ctrl-C again exits at once\n"
        )

    def second() -> None:
        sys.stderr.write(f"exiting now; nothing submitted is lost: `{resume}` resumes\n")

    with (
        interrupt.handling_signals(first, second, restore=not _OWN_PROCESS),
        _flows(),
        Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            transient=False,
        ) as bar,
    ):
        from flows.run_campaign import run_campaign

        task = bar.add_task(name or sheet.stem, total=total, counts="")

        def advance(done: int, total: int, result: campaigns.RowResult) -> None:
            counts[result.status] = counts.get(result.status, 0) + 1
            text = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
            bar.update(task, completed=done, total=total, counts=text)

        remove = campaigns.add_progress_listener(advance)
        try:
            state = run_campaign(
                sheet=str(sheet),
                name=name or "",
                budget_usd=budget or 0.0,
                skip_invalid=skip_invalid,
                row_concurrency=concurrency or 0,
                brand=str(brand.resolve()) if brand else "",
                mode=mode,
                approved_only=approved_only,
                work_pool=pool or "",
                return_state=True,
            )
        finally:
            remove()
    if not state.is_completed():
        if state.is_cancelled():  # Ctrl-C (or a cancel from the Prefect UI): one line and how to resume
            typer.echo(f"{state.message}\nresume with: {resume}", err=True)
            raise typer.Exit(130)
        raise CliError(f"campaign failed: {state.message}")
    result = state.result()
    for row in result.results:
        if row.status != "succeeded" and not (row.status == "skipped" and result.not_approved):
            typer.echo(redact(f"{row.status:<9} row {row.row} ({row.row_id}): {row.error}"))
        elif row.warning:
            typer.echo(redact(f"warning   row {row.row} ({row.row_id}): {row.warning}"))
    what = "previewed" if result.mode == "preview" else "succeeded"
    typer.echo(
        f"{result.name}: {result.succeeded} {what}, {result.failed} failed, {result.skipped} skipped"
        + (f" ({result.not_approved} not approved)" if result.not_approved else "")
        + f"; spent ${result.cost_usd:.2f}"
        + (" (resumed)" if result.resumed else "")
    )
    if result.succeeded:
        typer.echo(f"videos: {campaigns.videos_prefix(result.name)} in {_runtime().storage.location}")
    if result.review_path:
        typer.echo(f"review page: {result.review_path}")
        campaign = result.name.removesuffix(campaigns.PREVIEW_SUFFIX)
        typer.echo(
            f"approve: castflow campaign approve {campaign} --rows ID,ID | --file approvals.csv; then "
            f"castflow campaign run {sheet}" + (f" --name {name}" if name else "") + " --approved-only"
        )
    else:
        typer.echo(f"manifest: {result.manifest_path}")
    if result.failed:
        raise typer.Exit(1)


# ---- reports ------------------------------------------------------------------------------------------


@app.command()
def report(
    campaign: Annotated[str, typer.Argument(help="Campaign name (its newest run) or id.")],
    out: Annotated[Path | None, typer.Option("--out", help="Folder for the files.")] = None,
    embed: Annotated[
        bool,
        typer.Option("--embed", help="Put the videos (up to 8 MiB each) inside the page: one file to send."),
    ] = False,
    publish: Annotated[
        bool, typer.Option("--publish", help="Also put the page in storage, beside the campaign's videos.")
    ] = False,
    group_by: Annotated[
        str | None,
        typer.Option(
            "--group-by",
            help="A matrix campaign's gallery by hook, body, actor or scene (default: the first).",
        ),
    ] = None,
) -> None:
    """Write a campaign's report: CSV, Parquet, XLSX and an HTML page with charts and a gallery."""

    def go() -> None:
        from castflow import reports

        try:
            built = reports.build(_runtime(), campaign, out, embed=embed, publish=publish, group_by=group_by)
        except reports.ReportError as exc:
            raise CliError(str(exc)) from exc
        t = built.totals
        typer.echo(
            f"{built.name}: {t['succeeded']}/{t['rows']} finished, {t['failed']} failed, {t['skipped']} skipped; "
            f"spent ${t['spend_usd']:.2f}"
            + (
                f" (on the real providers: ${built.real_usd:.2f}, a first run there)"
                if built.real_usd is not None
                else ""
            )
        )
        typer.echo(f"html: {built.files['html']}")
        if built.published_url:
            typer.echo(f"published: {built.published_url}")
        typer.echo(f"xlsx: {built.files['xlsx']}")
        typer.echo(f"csv and parquet: {built.files['csv']}")

    _run(go)


# ---- serve ---------------------------------------------------------------------------------------------


def deployments_from_yaml(path: Path | None = None) -> list[Any]:
    """The deployments of prefect.yaml (the repository's, or the copy in the installed package) as
    runner deployments: flow, name, description, tags and schedules as declared there."""
    import yaml
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Schedule

    root = Path(__file__).resolve().parents[2]
    path = path or (
        root / "prefect.yaml"
        if (root / "prefect.yaml").is_file()
        else Path(__file__).parent / "_data" / "prefect.yaml"
    )
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    built = []
    for spec in config["deployments"]:
        file, func = spec["entrypoint"].split(":")
        flow: Any = load_flow_from_entrypoint(f"{root / file}:{func}")
        schedules = [
            Schedule(cron=s["cron"], timezone=s.get("timezone", "UTC"), active=s.get("active", True))
            for s in spec.get("schedules", [])
            if "cron" in s
        ]
        built.append(
            flow.to_deployment(
                name=spec["name"],
                description=spec.get("description"),
                tags=spec.get("tags", []),
                schedules=schedules or None,
            )
        )
    return built


@app.command()
def serve(
    storage_host: Annotated[
        str, typer.Option("--storage-host", help="Address the local storage folder is served on.")
    ] = "127.0.0.1",
    storage_port: Annotated[
        int,
        typer.Option(
            "--storage-port",
            min=0,
            max=65535,
            help="Serve the local storage folder over HTTP here, so the videos, pictures and reports "
            "linked from the Prefect UI open in a browser (0: do not serve it).",
        ),
    ] = 8788,
) -> None:
    """Serve every castflow deployment from this process against your Prefect server (PREFECT_API_URL).

    Runs triggered from the UI, schedules or the API execute here until you stop it (Ctrl-C).
    """

    def go() -> None:
        from prefect import serve as prefect_serve

        settings = _settings()
        if settings.storage.backend == "local" and storage_port:
            import socket
            from urllib.parse import urlsplit

            from castflow.storage.local import serve_folder

            settings.storage_root.mkdir(parents=True, exist_ok=True)
            host = socket.getfqdn() if storage_host in ("0.0.0.0", "::") else storage_host  # noqa: S104
            named = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL
            base = settings.storage.public_url or f"http://{named}:{storage_port}"
            try:
                serve_folder(
                    settings.storage_root,
                    storage_host,
                    storage_port,
                    names=(named, urlsplit(base).hostname or named),
                )
            except OSError as exc:
                raise CliError(
                    f"cannot serve the storage folder on {storage_host}:{storage_port} ({exc}): "
                    "pick another --storage-port, or 0 not to serve it"
                ) from exc
            # The flow runs this process starts read it too: their links are http, not file://.
            os.environ["CASTFLOW_STORAGE__PUBLIC_URL"] = base
            reset_settings()
            typer.echo(f"storage folder {settings.storage_root} served at {base}/")
        rt = _runtime()  # configuration and database checked before anything is registered
        deployments = deployments_from_yaml()
        typer.echo(f"serving {len(deployments)} deployments: " + ", ".join(d.name for d in deployments))
        roots = rt.settings.parameter_roots("run-campaign")
        roots[0].mkdir(parents=True, exist_ok=True)
        typer.echo(f"sheets for run-campaign go in {roots[0]} (files a deployment may read: parameter roots)")
        sys.stdout.flush()
        prefect_serve(*deployments, print_starting_message=False)

    _run(go)


# ---- doctor -------------------------------------------------------------------------------------------


@app.command()
def doctor() -> None:
    """Check the configuration: keys accepted, hosts reachable, database migrated, buckets present.

    Spends nothing and never prints a secret. Exit status 1 when a check fails.
    """

    def go() -> None:
        from castflow.doctor import run_checks

        marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
        checks = run_checks(_settings())
        for check in checks:
            typer.echo(redact(f"{marks[check.level]}  {check.name:<10} {check.detail}"))
        if any(c.level == "fail" for c in checks):
            raise typer.Exit(1)

    _run(go)


def main() -> None:
    """The console script; a crash prints its traceback redacted (pretty exceptions are off)."""
    global _OWN_PROCESS
    _OWN_PROCESS = True
    from castflow import interrupt

    interrupt.ignore_at_the_very_end()
    try:
        status = app()
    except Exception as exc:
        sys.stderr.write(format_exception(exc))
        sys.exit(1)
    sys.exit(status)
