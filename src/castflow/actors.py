"""The actor library: read actor files (YAML or CSV), store portraits content-hashed, upsert actors."""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from castflow.db import queries
from castflow.inputs import UrlRefused, fetch_public
from castflow.models import Mouth, Voice
from castflow.portraits import SAMPLE_LOOKS, SAMPLE_MOUTH, draw_portrait
from castflow.runtime import Runtime
from castflow.stages import sha256_file

DRAWN = "drawn:"  # portrait scheme for the procedurally drawn sample portraits, e.g. "drawn:maya"
MAX_PORTRAIT_BYTES = 20 * 1024 * 1024


class ActorFileError(Exception):
    """An actor file with problems; the message lists every one of them."""


class ActorSpec(BaseModel):
    """One actor as written in an actor file."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="Stable id: lowercase, digits, - and _."
    )
    name: str = Field(min_length=1, max_length=200)
    portrait: str = Field(
        min_length=1, description="Local file (relative to the actor file), URL, or drawn:NAME."
    )
    voice: Voice
    mouth: Mouth | None = None


SAMPLE_ACTORS: list[ActorSpec] = [
    ActorSpec(
        key="maya",
        name="Maya",
        portrait="drawn:maya",
        mouth=SAMPLE_MOUTH,
        voice=Voice(provider="local", model="espeak-ng", voice_id="en-us+f3"),
    ),
    ActorSpec(
        key="leo",
        name="Leo",
        portrait="drawn:leo",
        mouth=SAMPLE_MOUTH,
        voice=Voice(provider="local", model="espeak-ng", voice_id="en+m3"),
    ),
    ActorSpec(
        key="ava",
        name="Ava",
        portrait="drawn:ava",
        mouth=SAMPLE_MOUTH,
        voice=Voice(provider="local", model="espeak-ng", voice_id="en-us+f4"),
    ),
]


def parse_actor_file(path: Path) -> list[ActorSpec]:
    """Read and validate an actor file; all problems are reported at once, each with its entry."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ActorFileError(f"{path}: cannot read: {exc}") from exc
    raw: list[Any]
    if path.suffix.lower() == ".csv":
        raw = [_csv_row(r) for r in csv.DictReader(io.StringIO(text))]
        label = "row {n}"
        offset = 2  # header is row 1
    elif path.suffix.lower() in (".yaml", ".yml"):
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ActorFileError(f"{path}: not valid YAML: {exc}") from exc
        items = doc.get("actors") if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise ActorFileError(f"{path}: expected a list of actors (or a mapping with an 'actors' list)")
        raw = items
        label = "actor {n}"
        offset = 1
    else:
        raise ActorFileError(f"{path}: unknown actor file type {path.suffix!r} (use .yaml, .yml or .csv)")
    specs: list[ActorSpec] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        where = label.format(n=i + offset)
        try:
            spec = ActorSpec.model_validate(item)
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"]) or "entry"
                errors.append(f"{path.name} {where}, {field}: {err['msg']}")
            continue
        if spec.key in seen:
            errors.append(
                f"{path.name} {where}, key: duplicate actor key {spec.key!r} (first at {label.format(n=seen[spec.key])})"
            )
            continue
        seen[spec.key] = i + offset
        specs.append(spec)
    if not raw:
        errors.append(f"{path.name}: no actors in the file")
    if errors:
        raise ActorFileError("\n".join(errors))
    return specs


def _csv_row(row: dict[str, str | None]) -> dict[str, Any]:
    out: dict[str, Any] = {k: v for k, v in row.items() if k and not k.startswith(("voice_", "mouth_")) and v}
    out["voice"] = {
        "provider": row.get("voice_provider") or "",
        "model": row.get("voice_model") or "",
        "voice_id": row.get("voice_id") or "",
    }
    if row.get("mouth_x"):
        out["mouth"] = {"x": row.get("mouth_x"), "y": row.get("mouth_y"), "width": row.get("mouth_width")}
    return out


@dataclass(frozen=True)
class _Portrait:
    spec: ActorSpec
    path: Path
    sha256: str
    suffix: str


def import_actors(rt: Runtime, specs: Sequence[ActorSpec], *, base_dir: Path) -> list[str]:
    """Store every portrait and upsert every actor; nothing is written unless all portraits are readable."""
    with tempfile.TemporaryDirectory(prefix="castflow-actors-") as tmp:
        portraits: list[_Portrait] = []
        errors: list[str] = []
        for spec in specs:
            try:
                portraits.append(
                    _load_portrait(
                        spec, base_dir, Path(tmp), allow_private=rt.settings.campaign.allow_private_urls
                    )
                )
            except ActorFileError as exc:
                errors.append(str(exc))
        if errors:
            raise ActorFileError("\n".join(errors))
        for p in portraits:
            key = f"actors/{p.spec.key}/{p.sha256[:16]}{p.suffix}"
            rt.storage.put_file(key, p.path, "image/png" if p.suffix == ".png" else "image/jpeg")
            with rt.session() as s:
                queries.upsert_actor(
                    s,
                    key=p.spec.key,
                    values={
                        "name": p.spec.name,
                        "image_key": key,
                        "image_hash": p.sha256,
                        "voice_provider": p.spec.voice.provider,
                        "voice_model": p.spec.voice.model,
                        "voice_id": p.spec.voice.voice_id,
                        "mouth": p.spec.mouth.model_dump() if p.spec.mouth else None,
                    },
                )
    return [p.spec.key for p in portraits]


def _load_portrait(
    spec: ActorSpec, base_dir: Path, tmp: Path, *, allow_private: bool = False, transport: Any = None
) -> _Portrait:
    dest = tmp / f"{spec.key}.src"
    where = f"actor {spec.key!r}, portrait"
    if spec.portrait.startswith(DRAWN):
        look = SAMPLE_LOOKS.get(spec.portrait.removeprefix(DRAWN))
        if look is None:
            raise ActorFileError(
                f"{where}: no drawn portrait {spec.portrait!r} (have {', '.join(SAMPLE_LOOKS)})"
            )
        draw_portrait(look).save(dest, format="PNG")
    elif spec.portrait.startswith(("http://", "https://")):
        try:  # public addresses only, after DNS and every redirect; size, time and type bounded
            fetch_public(
                spec.portrait,
                dest,
                max_bytes=MAX_PORTRAIT_BYTES,
                content_types=("image/",),
                allow_private=allow_private,
                transport=transport,
            )
        except UrlRefused as exc:
            hint = (
                " (CASTFLOW_CAMPAIGN__ALLOW_PRIVATE_URLS=true allows private addresses)"
                if exc.non_public
                else ""
            )
            raise ActorFileError(f"{where}: {spec.portrait.split('?', 1)[0]} refused: {exc}{hint}") from None
        except httpx.HTTPError as exc:
            raise ActorFileError(f"{where}: cannot download {spec.portrait.split('?', 1)[0]}: {exc}") from exc
    else:
        src = Path(spec.portrait).expanduser()
        src = src if src.is_absolute() else base_dir / src
        if not src.is_file():
            raise ActorFileError(f"{where}: file {src} does not exist")
        if src.stat().st_size > MAX_PORTRAIT_BYTES:
            raise ActorFileError(f"{where}: {src.name} is larger than {MAX_PORTRAIT_BYTES // 2**20} MB")
        dest.write_bytes(src.read_bytes())
    try:
        with Image.open(dest) as img:
            img.load()
            fmt = img.format
            if img.width < 64 or img.height < 64:
                raise ActorFileError(f"{where}: image is {img.width}x{img.height}, at least 64x64 is needed")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ActorFileError(f"{where}: not a readable image: {exc}") from exc
    if fmt not in ("PNG", "JPEG"):
        # Providers take PNG and JPEG; store anything else as PNG.
        with Image.open(dest) as img:
            img.convert("RGB").save(tmp / f"{spec.key}.png", format="PNG")
        dest = tmp / f"{spec.key}.png"
        fmt = "PNG"
    return _Portrait(spec, dest, sha256_file(dest), ".png" if fmt == "PNG" else ".jpg")


def ensure_sample_actors(rt: Runtime) -> list[str]:
    """Import the sample actors unless they are already there."""
    with rt.session() as s:
        missing = [a for a in SAMPLE_ACTORS if queries.get_actor(s, key=a.key) is None]
    if missing:
        import_actors(rt, missing, base_dir=Path.cwd())
    return [a.key for a in SAMPLE_ACTORS]
