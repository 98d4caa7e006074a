"""Stage keys (the idempotency key of every paid step) and the price table used to cost them."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any

# Bump to regenerate every stage deliberately (a change in what a stage produces for the same inputs).
CACHE_VERSION = "1"


_ALNUM = re.compile(r"[^\W_]")  # a letter or a digit, in any writing system


def speakable(text: str) -> bool:
    """Whether a script has anything to say: a letter or a digit in any writing system (a script of
    zero-width spaces or punctuation renders a silent, sub-second video)."""
    return _ALNUM.search(text) is not None


# Unicode category Cc is exactly these: C0 (U+0000-U+001F), DEL and C1 (U+007F-U+009F).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def control_characters(text: str, *, allow: str = "") -> list[str]:
    """The control characters in ``text`` (Unicode category Cc: NUL, C0, DEL, C1) other than those in
    ``allow``, as ``U+XXXX`` names, each once, in order."""
    found: list[str] = []
    for match in _CONTROL.finditer(text):  # a regex: sheets have millions of characters
        ch = match.group()
        name = f"U+{ord(ch):04X}"
        if ch not in allow and name not in found:
            found.append(name)
    return found


def normalise_text(text: str) -> str:
    """The form of a script or prompt that decides the output: NFC, trimmed, single spaces."""
    # str.split() splits on exactly the characters that \s matches (str.isspace), so this is the
    # _WS.sub(" ", ...).strip() of earlier versions (the keys stay the same), five times faster.
    return " ".join(unicodedata.normalize("NFC", text).split())


def stage_key(stage: str, *, provider: str, model: str, **inputs: Any) -> str:
    """SHA-256 over the canonical JSON of everything that changes a stage's output.

    Callers pass normalised text, content hashes of input media (never paths) and settings such as
    voice, seed and resolution. Keys are stable across processes and machines.
    """
    payload = {"v": CACHE_VERSION, "stage": stage, "provider": provider, "model": model, "inputs": inputs}
    return hashlib.sha256(_CANONICAL.encode(payload).encode("utf-8")).hexdigest()


# json.dumps with these options, built once (dumps makes an encoder per call; a sheet needs 300,000 keys).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_file(path: str | bytes | Any, chunk: int = 1 << 20) -> str:
    """Content hash of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
