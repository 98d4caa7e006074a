"""Secrets never reach error texts, logs, artifacts or the terminal: castflow.redact."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from castflow import redact as r
from castflow.actors import ensure_sample_actors
from castflow.cli import app
from castflow.runtime import Runtime
from castflow.settings import Settings

JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1cmwiOiJ1Z2MtdmlkZW8vYS5tcDQifQ.c2lnbmF0dXJlX3BhcnQtX3h5eg"
FAL_KEY = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0:0123456789abcdef0123456789abcdef"

# (text, secrets that must be gone, parts that must stay)
CASES = [
    (
        f"GET http://127.0.0.1:54321/storage/v1/object/sign/ugc-video/maya/a.mp4?token={JWT} -> 400",
        [JWT, "eyJ"],
        ["http://127.0.0.1:54321/storage/v1/object/sign/ugc-video/maya/a.mp4?token=", "-> 400"],
    ),
    (
        "https://b.s3.amazonaws.com/v.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAEXAMPLE%2F20250101%2Fus-east-1%2Fs3&X-Amz-Signature=9f8e7d6c5b4a"
        "&X-Amz-Security-Token=IQoJb3JpZ2luX2Vj//ABC=",
        ["AKIAEXAMPLE", "9f8e7d6c5b4a", "IQoJb3JpZ2luX2Vj"],
        ["https://b.s3.amazonaws.com/v.mp4?", "X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Signature="],
    ),
    (
        "Client error '403 Forbidden' for url 'https://h/x?page=2&SIG=s1gn4ture&Key=k3yvalue'",
        ["s1gn4ture", "k3yvalue"],
        ["Client error '403 Forbidden'", "https://h/x?page=2&SIG=", "'"],
    ),
    (
        "https://h/a?signature=aa11&apikey=bb22&api_key=cc33&access_token=dd44&secret=ee55&password=ff66",
        ["aa11", "bb22", "cc33", "dd44", "ee55", "ff66"],
        ["https://h/a?signature=", "&password="],
    ),
    (
        f"request headers {{'Authorization': 'Key {FAL_KEY}', 'Accept': 'application/json'}}",
        [FAL_KEY, "0123456789abcdef"],
        ["'Authorization': 'Key ", "'Accept': 'application/json'"],
    ),
    (
        f"fal said: bad credentials (Key {FAL_KEY})",
        [FAL_KEY],
        ["fal said: bad credentials (Key "],
    ),
    ("Authorization: Bearer sk-live-abcdef123456", ["sk-live-abcdef123456"], ["Authorization: Bearer "]),
    ("upload refused for Bearer abcdefghijklmnopqrstuvwxyz", ["abcdefghijklmnop"], ["upload refused for"]),
    ("apikey: sb_secret_abcdefghijklmnop", ["sb_secret_abcdefghijklmnop"], ["apikey: "]),
    (f"storage answered 401 for service key {JWT}", [JWT], ["storage answered 401 for service key"]),
    (
        "connection failed: postgresql+psycopg://castflow:s3cr3t-pw@db.internal:5432/castflow",
        ["s3cr3t-pw"],
        ["postgresql+psycopg://castflow:", "@db.internal:5432/castflow"],
    ),
    (
        'CASTFLOW_CALLBACKS__SECRET=whsec_abcdefghij body {"password": "pa55word!"}',
        ["whsec_abcdefghij", "pa55word!"],
        ["CASTFLOW_CALLBACKS__SECRET=", '{"password": "'],
    ),
]

# Ordinary texts that mention the words without holding a secret stay as they are.
UNTOUCHED = [
    "storage key videos/maya/abc123.mp4 not found",
    "the bearer token was refused",
    "wavespeed.webhook_secret: contains spaces or control characters (value not shown)",
    "GET http://localhost:8080/queue/requests/42/status?logs=1 -> 200",
    "unknown actor 'nobody' (known: ava, leo, maya)",
]


@pytest.mark.parametrize(("text", "secrets", "kept"), CASES)
def test_each_secret_form_is_redacted_and_the_rest_stays(
    text: str, secrets: list[str], kept: list[str]
) -> None:
    clean = r.redact(text)
    assert r.MARKER in clean
    for secret in secrets:
        assert secret not in clean
    for part in kept:
        assert part in clean


@pytest.mark.parametrize("text", UNTOUCHED)
def test_texts_without_secrets_are_untouched(text: str) -> None:
    assert r.redact(text) == text


@pytest.mark.parametrize("text", [c[0] for c in CASES] + UNTOUCHED)
def test_redaction_is_idempotent(text: str) -> None:
    once = r.redact(text)
    assert r.redact(once) == once


def test_registered_secrets_are_redacted_exactly_and_short_ones_ignored() -> None:
    r.register_secret("opaque-value-without-any-pattern-7q2")
    r.register_secret("pa$$ w/rd-9x")
    r.register_secret("short7")
    text = "saw opaque-value-without-any-pattern-7q2 twice: opaque-value-without-any-pattern-7q2; short7"
    assert r.redact(text) == "saw [redacted] twice: [redacted]; short7"
    assert (
        r.redact("encoded pa%24%24%20w%2Frd-9x or raw pa$$ w/rd-9x") == "encoded [redacted] or raw [redacted]"
    )


def test_redact_never_raises() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    class Bad:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert r.redact(Bad()) == r.MARKER  # type: ignore[arg-type]  # nothing shown rather than a leak
    assert r.redact_exc(Unprintable()) == "<unprintable Unprintable>"
    assert r.describe(Unprintable()) == "Unprintable: <unprintable Unprintable>"


def test_exception_helpers() -> None:
    exc = ConnectionError(f"upload to https://h/o?token={JWT} failed")
    assert r.redact_exc(exc) == "upload to https://h/o?token=[redacted] failed"
    assert r.describe(exc) == "ConnectionError: upload to https://h/o?token=[redacted] failed"
    try:
        raise exc
    except ConnectionError as caught:
        text = r.format_exception(caught)
    assert "Traceback" in text
    assert JWT not in text
    assert "token=[redacted]" in text


# ---- logging ------------------------------------------------------------------------------------------


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own, writing to a string through a plain handler."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("castflow.test_redact")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    yield log, out
    log.removeHandler(handler)


def test_filter_redacts_args_and_tracebacks(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = logger
    log.handlers[0].addFilter(r.RedactingFilter())
    signed = f"http://127.0.0.1:9/storage/v1/object/sign/ugc-video/a.mp4?token={JWT}"
    log.info("fetching %s (attempt %d)", signed, 2)
    try:
        raise RuntimeError("provider refused Authorization: Bearer tok-abcdef-123456")
    except RuntimeError:
        log.exception("lip-sync failed")
    text = out.getvalue()
    assert JWT not in text
    assert "tok-abcdef-123456" not in text
    assert "http://127.0.0.1:9/storage/v1/object/sign/ugc-video/a.mp4?token=[redacted] (attempt 2)" in text
    assert "lip-sync failed" in text
    assert "Traceback" in text
    assert "RuntimeError: provider refused Authorization: Bearer [redacted]" in text


def test_installed_factory_redacts_records_before_any_handler(
    logger: tuple[logging.Logger, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging, "_logRecordFactory", logging.getLogRecordFactory())  # restored after
    log, out = logger
    r.install_log_redaction()
    factory = logging.getLogRecordFactory()
    r.install_log_redaction()
    assert logging.getLogRecordFactory() is factory  # installing twice does not wrap twice
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    log.addHandler(Keep())  # no filter on it: the factory did the work
    log.warning("GET %s -> %d", f"https://h/x?apikey={FAL_KEY}", 401)
    log.warning(f"header Key {FAL_KEY}")
    assert FAL_KEY not in out.getvalue()
    assert "GET https://h/x?apikey=[redacted] -> 401" in out.getvalue()
    # Args that redact one by one are kept as args (uvicorn's access formatter unpacks them).
    assert records[0].args == ("https://h/x?apikey=[redacted]", 401)
    assert records[1].getMessage() == "header Key [redacted]"


# ---- settings -----------------------------------------------------------------------------------------


def test_register_settings_secrets_walks_every_secret(tmp_path: Path) -> None:
    s = Settings(
        data_dir=tmp_path,
        database={"url": "postgresql+psycopg://castflow:db-pass-3k9x@db/castflow"},  # type: ignore[arg-type]
        fal={"key": "fal-id:fal-secret-5m2p"},  # type: ignore[arg-type]
        wavespeed={"key": "ws-key-8j4h-0000", "webhook_secret": "whsec-6t1v-0000"},  # type: ignore[arg-type]
        storage={"supabase": {"url": "https://ref.supabase.co", "service_role_key": "sb-service-2n7q"}},  # type: ignore[arg-type]
        callbacks={"secret": "cb-hmac-4r8w-0000"},  # type: ignore[arg-type]
    )
    r.register_settings_secrets(s)
    values = ["fal-id:fal-secret-5m2p", "ws-key-8j4h-0000", "sb-service-2n7q", "whsec-6t1v-0000"]
    values += ["cb-hmac-4r8w-0000", "db-pass-3k9x"]
    text = "leaked: " + ", ".join(values) + " and connection to db failed"
    clean = r.redact(text)
    for value in values:
        assert value not in clean
    assert clean == "leaked: " + ", ".join([r.MARKER] * len(values)) + " and connection to db failed"
    # The database URL stays readable: only its password goes.
    assert r.redact(s.database_url) == "postgresql+psycopg://castflow:[redacted]@db/castflow"


def test_cli_errors_are_redacted(rt: Runtime) -> None:
    ensure_sample_actors(rt)
    result = CliRunner().invoke(app, ["video", "maya", "--audio", f"clip.wav?token={JWT}"])
    assert result.exit_code == 2
    assert JWT not in result.stderr
    assert "audio file clip.wav?token=[redacted] does not exist" in result.stderr
