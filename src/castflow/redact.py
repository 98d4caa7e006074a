"""Secret redaction for everything castflow shows or stores as text: errors, logs, artifacts, reports.

Provider messages and HTTP library errors quote URLs and headers verbatim (signed storage URLs carry
their token in the query, fal sends ``Authorization: Key ...``), so every text that leaves the process
goes through :func:`redact` first. It knows the usual forms of secrets and, on top, the exact values
castflow holds (:func:`register_secret`, :func:`register_settings_secrets`). It is idempotent (a text
can pass through several layers) and never raises (it runs inside error handling).
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from pydantic import BaseModel, SecretStr

MARKER = "[redacted]"
MIN_SECRET_LENGTH = 8  # shorter registered values would redact ordinary words

_NOT_DONE = r"(?!\[redacted\])"  # a value that is the marker already is left alone (idempotence)
_QUERY_NAMES = (
    "token|sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|key|apikey|api_key"
    "|access_token|secret|password"
)
_SCHEMES = "bearer|key|basic|token|digest"

# (pattern, replacement) applied in order; each keeps the name and drops only the value.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Query (or fragment) parameters of any URL: ?token=..., &X-Amz-Signature=...
    (re.compile(rf"(?i)([?&#](?:{_QUERY_NAMES})=){_NOT_DONE}[^&#\s'\"<>)\]]+"), rf"\1{MARKER}"),
    # Passwords in URLs: scheme://user:password@host
    (re.compile(rf"(?i)(\b[a-z][a-z0-9+.-]*://[^:/?#@\s]*:){_NOT_DONE}[^@/?#\s]+(@)"), rf"\1{MARKER}\2"),
    # Authorization headers, any scheme (fal: "Key <id:secret>", Supabase: "Bearer <jwt>").
    (
        re.compile(
            rf"(?i)(\bauthorization['\"]?\s*[:=]\s*['\"]?(?:(?:{_SCHEMES})\s+)?)"
            rf"(?!\[redacted\]|(?:{_SCHEMES})\b)[^\s'\",;]+"
        ),
        rf"\1{MARKER}",
    ),
    # Bare "Bearer <token>" and fal's "Key <id:secret>" (case-sensitive: "key" is an ordinary word).
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}"), rf"\1{MARKER}"),
    (re.compile(r"(\bKey\s+)[A-Za-z0-9:_-]{16,}"), rf"\1{MARKER}"),
    # Supabase's "apikey: <key>" header and its spellings.
    (re.compile(rf"(?i)(\b(?:x-)?api[-_]?key['\"]?\s*:\s*['\"]?){_NOT_DONE}[^\s'\",;&]+"), rf"\1{MARKER}"),
    # name=value and "name": "value" pairs outside URLs (form bodies, JSON, env dumps).
    (
        re.compile(
            r"(?i)((?<![a-z0-9])(?:password|passwd|secret|api[-_]?key|access[-_]token|refresh[-_]token"
            rf"|service[-_]role[-_]key)(?:['\"]?\s*=\s*['\"]?|['\"]\s*:\s*['\"])){_NOT_DONE}[^\s'\",;&]+"
        ),
        rf"\1{MARKER}",
    ),
    # JWTs (Supabase keys and signed-URL tokens): three base64url segments, the first one '{"...'.
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), MARKER),
)

_lock = threading.Lock()
_secrets: set[str] = set()
_exact: re.Pattern[str] | None = None  # one alternation of the registered values, longest first


def register_secret(value: str) -> None:
    """Redact this exact value (and its URL-encoded form) wherever it appears from now on."""
    if len(value) < MIN_SECRET_LENGTH or value in MARKER:
        return
    global _exact
    with _lock:
        new = {value, quote(value, safe="")} - _secrets
        if not new:
            return
        _secrets.update(new)
        ordered = sorted(_secrets, key=len, reverse=True)
        _exact = re.compile("|".join(re.escape(s) for s in ordered))


def register_settings_secrets(settings: BaseModel) -> None:
    """Register every SecretStr of a settings tree. Of a URL (the database URL) only the password is
    registered: it shows on its own in driver errors, and the rest of the URL helps to read them."""
    for secret in _secret_values(settings):
        if "://" not in secret:
            register_secret(secret)
            continue
        password = _url_password(secret)
        if password:
            register_secret(password)


def _secret_values(model: BaseModel) -> list[str]:
    found: list[str] = []
    for name in type(model).model_fields:
        value = getattr(model, name, None)
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, BaseModel):
            found += _secret_values(value)
    return found


def _url_password(value: str) -> str | None:
    try:
        password = urlsplit(value).password
    except ValueError:
        return None
    return unquote(password) if password else None


def redact(text: str) -> str:
    """The text with every secret replaced by ``[redacted]``; the rest stays readable."""
    try:
        if not isinstance(text, str):
            text = str(text)
        exact = _exact
        if exact is not None:
            text = exact.sub(MARKER, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text
    except Exception:  # redaction runs in error paths: never raise, never leak
        return MARKER


def redact_exc(exc: BaseException) -> str:
    """An exception's message, redacted (for error columns and records)."""
    return redact(_safe_str(exc))


def describe(exc: BaseException) -> str:
    """``Type: message``, redacted (for one-line error output)."""
    return redact(f"{type(exc).__name__}: {_safe_str(exc)}")


def format_exception(exc: BaseException) -> str:
    """The full traceback, redacted (for crashes printed to the terminal)."""
    try:
        return redact("".join(traceback.format_exception(exc)))
    except Exception:
        return describe(exc)


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


# ---- logging ------------------------------------------------------------------------------------------


def _scrub(record: logging.LogRecord) -> None:
    """Redact a record's message, traceback and stack in place.

    The message is rendered with its args and redacted as a whole (a secret may be split between the
    template and an arg). When redacting the args one by one gives the same text, the args are kept
    instead: some formatters unpack them (uvicorn's access log). The traceback is formatted into
    ``exc_text`` and ``exc_info`` cleared, so no handler can render the raw exception again.
    """
    try:
        message = record.getMessage()
    except Exception:  # a bad format: logging would print msg and args raw in its error report
        record.msg, record.args = redact(f"{record.msg!s} % {record.args!r}"), None
        message = record.msg
    clean = redact(message)
    if clean != message:
        args = record.args
        kept = (
            tuple(redact(a) if isinstance(a, str) else a for a in args)
            if isinstance(args, tuple) and args
            else None
        )
        try:
            same = kept is not None and isinstance(record.msg, str) and record.msg % kept == clean
        except Exception:
            same = False
        record.msg, record.args = (record.msg, kept) if same else (clean, None)
    if record.exc_info:
        if not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class RedactingFilter(logging.Filter):
    """Redacts every record passing a handler (records made before the factory was installed too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _scrub(record)
        return True


LOGGERS = (
    "",
    "prefect",
    "prefect.flow_runs",
    "prefect.task_runs",
    "castflow",
    "httpx",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
)


def install_log_redaction() -> None:
    """Redact every log record of the process: a record factory for records made from now on, and a
    filter on the handlers of the root, Prefect, castflow, httpx and uvicorn loggers. Idempotent; call
    it again after handlers are (re)configured."""
    with _lock:
        previous = logging.getLogRecordFactory()
        if not getattr(previous, "castflow_redacting", False):
            logging.setLogRecordFactory(_redacting_factory(previous))
    for name in LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())


def _redacting_factory(previous: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _scrub(record)
        return record

    factory.castflow_redacting = True  # type: ignore[attr-defined]
    return factory


def install(settings: BaseModel) -> None:
    """The whole set-up for a process (CLI, flow run): log redaction and the settings' secrets."""
    install_log_redaction()
    register_settings_secrets(settings)
