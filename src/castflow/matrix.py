"""Matrix campaigns: a YAML file of axes (hooks, bodies, actors, scenes, caption styles, export formats)
expanded into the rows of a sheet, each with a deterministic variant id and a name ad tools can parse.

A matrix file::

    campaign: spring-serum            # {campaign} in names (default: the file's name without .yaml)
    name: "{campaign}_{hook}_{body}_{actor}_{scene}_{product}_{ratio}"   # the naming template (this default)
    hooks:                            # each: an id (letters, digits, '-') and the words said
      - {id: h1, text: "Okay, real talk."}
      - {id: h2, text: "Stop scrolling."}
    bodies:
      - {id: b1, text: "This serum changed my mornings."}
    actors: [maya, leo]               # actor keys from the library
    scenes:                           # each: an id and the edit prompt, or just the prompt
      - {id: kitchen, prompt: a sunny kitchen}
    products:                         # each: an id and its image (beside the matrix, or a URL): held
      - {id: serum, image: serum.png}
    ratios: ["9:16", "1:1"]           # the scene's ratio (other than 9:16 needs scenes)
    captions: bold                    # one value for every row, or a list: an axis
    formats: tiktok|square            # likewise ("tiktok|square" is one value: a row making both)
    resolution: 480p                  # one value for every row
    brand: brand/brand.yaml           # a brand kit beside the matrix, for every row
    combine: product                  # every combination (default), or zip: the axes side by side
    zip: [[hooks, bodies]]            # with product: axes that go together, side by side
    include: [{actor: maya}]          # keep only the combinations matching one of these
    exclude: [{hook: h2, scene: kitchen}]   # drop those matching one of these (a value or a list)
    limit: 20                         # at most this many rows, a sample chosen by ``seed``
    seed: 7

The script of a row is its hook's text then its body's text. A row's id is ``v`` and ten hex digits of a
hash of its axis values (the same combination keeps its id whatever else changes in the file); its name
fills the template with the ids (a missing axis leaves its field empty and its separator out), sanitised
to letters, digits, ``.``, ``_`` and ``-`` for every storage backend. Two rows may not share a name
(letter case aside: some file systems ignore it). ``castflow campaign expand`` writes the rows as a CSV
sheet; ``castflow campaign run`` runs a matrix file as it runs a sheet.

Problems name the file, the field (``hooks[2].id``) and the reason, before anything is spent.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import random
import re
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from castflow import captions as captions_module
from castflow import finish

SUFFIXES = (".yaml", ".yml")
DEFAULT_NAME = "{campaign}_{hook}_{body}_{actor}_{scene}_{product}_{ratio}"  # empty fields drop out
# Axes in the order rows are made (the first varies slowest) and the template fields they fill.
AXES = ("hooks", "bodies", "actors", "scenes", "products", "ratios", "captions", "formats")
FIELD = {"hooks": "hook", "bodies": "body", "actors": "actor", "scenes": "scene", "products": "product",
         "ratios": "ratio", "captions": "captions", "formats": "formats"}  # fmt: skip
OTHER_FIELDS = ("campaign", "variant", "n")  # fields of names beyond the axes
MAX_NAME = 120  # characters of a row's name (file names allow 255; the profile suffix comes on top)
MAX_COMBINATIONS = 2_000_000  # looked at, before filters and the limit
_ID = r"^[A-Za-z0-9][A-Za-z0-9-]{0,39}$"  # no '_': the separator of names that ad tools split
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,119}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9-]+")
_RUNS = re.compile(r"([._-])[._-]+")


class MatrixError(ValueError):
    """A matrix file that cannot be expanded: the file, the field and the reason."""


def safe(value: str) -> str:
    """A value as a part of a name: letters, digits and '-' (anything else becomes '-')."""
    return _UNSAFE.sub("-", value).strip("-")


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Line(_Part):
    """A hook or a body: its id in names and its words."""

    id: str = Field(pattern=_ID)
    text: str = Field(min_length=1, max_length=5000)


class Product(_Part):
    """A product the actor holds: its id in names and its image (a file beside the matrix, or a URL)."""

    id: str = Field(pattern=_ID)
    image: str = Field(min_length=1, max_length=2000)


class Scene(_Part):
    id: str = Field(pattern=_ID)
    prompt: str = Field(min_length=1, max_length=5000)


def _scene(value: Any) -> Any:
    if isinstance(value, str):  # just the prompt: its id is made from it
        return {"id": safe(value.lower())[:40].strip("-") or "scene", "prompt": value}
    return value


def _listed(value: Any) -> Any:
    """One value for every row, or a list of them (an axis)."""
    return value if isinstance(value, list) else [value]


Rule = dict[str, str | int | list[str | int]]


class Matrix(_Part):
    campaign: str | None = Field(default=None, min_length=1, max_length=60)
    name: str = Field(default=DEFAULT_NAME, min_length=1, max_length=400)
    hooks: list[Line] = Field(default_factory=list, max_length=1000)
    bodies: list[Line] = Field(default_factory=list, max_length=1000)
    actors: Annotated[list[str], BeforeValidator(_listed)] = Field(min_length=1, max_length=1000)
    scenes: list[Annotated[Scene, BeforeValidator(_scene)]] = Field(default_factory=list, max_length=1000)
    products: list[Product] = Field(default_factory=list, max_length=100)
    ratios: Annotated[list[Literal["9:16", "4:5", "1:1", "16:9"]], BeforeValidator(_listed)] = Field(
        default_factory=list, max_length=4
    )
    captions: Annotated[list[str], BeforeValidator(_listed)] = Field(default_factory=list, max_length=10)
    formats: Annotated[list[str], BeforeValidator(_listed)] = Field(default_factory=list, max_length=100)
    resolution: Literal["480p", "720p"] | None = None
    brand: str | None = Field(default=None, min_length=1)
    speech: Literal["whole", "parts"] = "whole"
    combine: Literal["product", "zip"] = "product"
    zip: list[
        list[Literal["hooks", "bodies", "actors", "scenes", "products", "ratios", "captions", "formats"]]
    ] = Field(default_factory=list)
    include: list[Rule] = Field(default_factory=list)
    exclude: list[Rule] = Field(default_factory=list)
    limit: int | None = Field(default=None, ge=1)
    seed: int = 0

    @field_validator("captions")
    @classmethod
    def _styles(cls, value: list[str]) -> list[str]:
        styles = ("no", "yes", *captions_module.STYLE_NAMES)
        for style in value:
            if str(style).strip().lower() not in styles:
                raise ValueError(f"{style!r} is not a caption style ({', '.join(styles)})")
        return [str(s).strip().lower() for s in value]

    @field_validator("formats")
    @classmethod
    def _formats(cls, value: list[str]) -> list[str]:
        out = []
        for text in value:
            names, unknown = finish.parse_formats(str(text))
            if unknown:
                raise ValueError(f"{unknown[0]!r} is not an export profile ({', '.join(finish.NAMES)})")
            out.append("|".join(names))
        return out

    def axes(self) -> dict[str, list[str]]:
        """Each axis given, by name, with its values' ids (in file order)."""
        ids = {
            "hooks": [h.id for h in self.hooks],
            "bodies": [b.id for b in self.bodies],
            "actors": list(self.actors),
            "scenes": [s.id for s in self.scenes],
            "products": [p.id for p in self.products],
            "ratios": [r.replace(":", "x") for r in self.ratios],  # 9x16: a name part, and ':' is no file's
            "captions": list(self.captions),
            "formats": [f.replace("|", "+") for f in self.formats],
        }
        return {axis: values for axis, values in ids.items() if values}


@dataclass(frozen=True)
class Variant:
    """One row of a matrix: the index of each axis's value, its id and name."""

    picks: dict[str, int]  # axis -> index into that axis
    variant_id: str
    name: str


@dataclass(frozen=True)
class Expansion:
    """A matrix file expanded: what it declares, its rows and the sheet's columns and cells."""

    matrix: Matrix
    campaign: str
    combinations: int  # before filters and the limit
    variants: list[Variant]
    columns: list[str]
    rows: list[list[str]]

    def csv_text(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows(self.rows)
        return out.getvalue()


def _where(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not str(part).startswith(("function-", "literal[", "constrained-")):
            text += ("." if text else "") + str(part)
    return text or "matrix"


def read_matrix(path: Path) -> Matrix:
    """The matrix file, checked; MatrixError names the file, the field and the reason."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise MatrixError(f"{path.name}: cannot be read ({exc})") from None
    except yaml.YAMLError as exc:  # where, not the text
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise MatrixError(f"{path.name}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise MatrixError(f"{path.name}: expected a mapping of axes (hooks, bodies, actors, scenes, ...)")
    try:
        matrix = Matrix.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "not a matrix field (" + ", ".join(Matrix.model_fields) + ")"
        raise MatrixError(f"{path.name}: {_where(first['loc'])}: {message}") from None
    _check(path, matrix)
    return matrix


def _check(path: Path, matrix: Matrix) -> None:
    def fail(where: str, why: str) -> None:
        raise MatrixError(f"{path.name}: {where}: {why}")

    if not matrix.hooks and not matrix.bodies:
        fail("hooks", "give hooks, bodies or both (a row says its hook then its body)")
    if any(r != "9:16" for r in matrix.ratios) and not matrix.scenes:
        fail(
            "ratios", "a ratio other than 9:16 needs scenes (the image edit renders the scene at that ratio)"
        )
    if matrix.speech == "parts":
        for axis in ("hooks", "bodies"):
            for i, line in enumerate(getattr(matrix, axis)):
                if "|" in line.text:
                    fail(f"{axis}[{i}].text", "'|' cannot be in a part said on its own (speech: parts)")
    for axis in AXES:
        ids = matrix.axes().get(axis, [])
        seen: dict[str, int] = {}
        for i, value in enumerate(ids):
            if value.lower() in seen:
                field = f"{axis}[{i}]" + (".id" if axis in ("hooks", "bodies", "scenes") else "")
                fail(field, f"{value!r} is given twice (first as {axis}[{seen[value.lower()]}])")
            seen[value.lower()] = i
    axes = matrix.axes()
    fields = {FIELD[a] for a in AXES} | set(OTHER_FIELDS)
    try:
        used = {f for _, f, _, _ in string.Formatter().parse(matrix.name) if f is not None}
    except ValueError as exc:
        fail("name", f"{matrix.name!r} is not a naming template ({exc})")
    for field in sorted(used):
        if field not in fields:
            fail(
                "name",
                f"{{{field}}} is not a field of names ({', '.join('{' + f + '}' for f in sorted(fields))})",
            )
    grouped: set[str] = set()
    for g, group in enumerate(matrix.zip):
        if matrix.combine == "zip":
            fail("zip", "with combine: zip every axis goes side by side already; leave zip out")
        counts = {str(axis): len(axes.get(axis, [])) for axis in group}
        if len(set(counts.values())) > 1:
            told = ", ".join(f"{a} {n}" for a, n in counts.items())
            fail(f"zip[{g}]", f"axes side by side need as many values each ({told})")
        for axis in group:
            if axis in grouped:
                fail(f"zip[{g}]", f"{axis} is in two groups")
            grouped.add(axis)
    if matrix.combine == "zip":
        sizes = {axis: len(v) for axis, v in axes.items() if len(v) > 1}
        if len(set(sizes.values())) > 1:
            told = ", ".join(f"{a} {n}" for a, n in sizes.items())
            fail("combine", f"zip needs as many values on every axis with more than one ({told})")
    for kind in ("include", "exclude"):
        for r, rule in enumerate(getattr(matrix, kind)):
            if not rule:
                fail(f"{kind}[{r}]", "an empty rule")
            for field, wanted in rule.items():
                known = next((a for a in AXES if FIELD[a] == field or a == field), None)
                if known is None:
                    fail(f"{kind}[{r}].{field}", f"not an axis ({', '.join(FIELD[a] for a in AXES)})")
                    continue
                axis = known
                values = {v.lower() for v in axes.get(axis, [])}
                for value in wanted if isinstance(wanted, list) else [wanted]:
                    if _id_of(value) not in values:
                        fail(f"{kind}[{r}].{field}", f"{value!r} is not one of the matrix's {axis}")


def _groups(matrix: Matrix, axes: dict[str, list[str]]) -> list[list[str]]:
    """The axes crossed with each other; the axes of one group go side by side."""
    if matrix.combine == "zip":
        return [list(axes)]
    grouped = [[str(a) for a in group if a in axes] for group in matrix.zip]
    rest = [[a] for a in axes if not any(a in g for g in grouped)]
    return [g for g in grouped if g] + rest


def _combinations(
    axes: dict[str, list[str]], groups: list[list[str]]
) -> tuple[int, Iterator[dict[str, int]]]:
    sizes = [max(len(axes[a]) for a in group) for group in groups]
    count = 1
    for size in sizes:
        count *= size

    def each() -> Iterator[dict[str, int]]:
        for picks in itertools.product(*(range(s) for s in sizes)):
            chosen: dict[str, int] = {}
            for group, i in zip(groups, picks, strict=True):
                for axis in group:
                    chosen[axis] = min(i, len(axes[axis]) - 1)  # a single value goes with every other
            yield {axis: chosen[axis] for axis in axes}  # in axis order

    return count, each()


def _id_of(value: object) -> str:
    """A rule's value as the axis ids read (tiktok|square as tiktok+square, 16:9 as 16x9)."""
    return str(value).lower().replace("|", "+").replace(":", "x")


def _matches(rule: Rule, values: dict[str, str]) -> bool:
    for field, wanted in rule.items():
        axis = next(a for a in AXES if FIELD[a] == field or a == field)
        options = {
            str(v).lower().replace("|", "+") for v in (wanted if isinstance(wanted, list) else [wanted])
        }
        if values.get(axis, "").lower() not in options:
            return False
    return True


def variant_id(values: Mapping[str, str]) -> str:
    """``v`` and ten hex digits of the axis values (the combination alone decides it)."""
    text = "|".join(f"{axis}={values[axis]}" for axis in sorted(values))
    return "v" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]


def render_name(template: str, fields: Mapping[str, str]) -> str:
    """The template filled with sanitised values; an empty field takes its separator with it."""
    text = template.format_map({k: safe(v) for k, v in fields.items()})
    text = _UNSAFE_NAME.sub("-", text)
    return _RUNS.sub(r"\1", text).strip("._-")


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def expand(
    path: Path, *, actors: Mapping[str, Any] | None = None, max_rows: int = 100_000, speech: str | None = None
) -> Expansion:
    """The rows a matrix file declares (MatrixError: the file, the field and the reason). ``actors``: the
    library's actor keys, checked here once rather than on every row. ``speech``: this speech mode
    whatever the file says (what the other mode would cost)."""
    matrix = read_matrix(path)
    if speech is not None and speech != matrix.speech:
        matrix = matrix.model_copy(update={"speech": speech})
        _check(path, matrix)
    if actors is not None:
        for i, key in enumerate(matrix.actors):
            if key not in actors:
                from castflow.hints import unknown_actor

                raise MatrixError(f"{path.name}: actors[{i}]: {unknown_actor(key, actors)}")
    campaign = matrix.campaign or path.stem
    axes = matrix.axes()
    groups = _groups(matrix, axes)
    count, combos = _combinations(axes, groups)
    filtered = bool(matrix.include or matrix.exclude)
    if count > MAX_COMBINATIONS and (filtered or matrix.limit is None):
        raise MatrixError(
            f"{path.name}: expands to {count:,} combinations; at most {MAX_COMBINATIONS:,} can be "
            "looked at (fewer values, zip, or a limit without include/exclude)"
        )
    if not filtered and matrix.limit is None and count > max_rows:
        raise MatrixError(
            f"{path.name}: expands to {count:,} rows; a campaign takes at most {max_rows:,} "
            "(CASTFLOW_CAMPAIGN__MAX_ROWS); add a limit, zip axes or fewer values"
        )
    rng = random.Random(matrix.seed)  # noqa: S311 - a reproducible sample, not security
    kept: list[tuple[int, dict[str, int]]] = []
    seen = 0
    if not filtered and matrix.limit is not None and count > matrix.limit:  # a sample, never all made
        chosen = sorted(rng.sample(range(count), matrix.limit))
        sizes = [max(len(axes[a]) for a in g) for g in groups]
        for index in chosen:
            picks: dict[str, int] = {}
            rest = index
            for group, size in reversed(list(zip(groups, sizes, strict=True))):
                rest, i = divmod(rest, size)
                for axis in group:
                    picks[axis] = min(i, len(axes[axis]) - 1)
            kept.append((index, {axis: picks[axis] for axis in axes}))
    else:
        for index, picks in enumerate(combos):
            values = {axis: axes[axis][i] for axis, i in picks.items()}
            if matrix.include and not any(_matches(r, values) for r in matrix.include):
                continue
            if any(_matches(r, values) for r in matrix.exclude):
                continue
            seen += 1
            if matrix.limit is None:
                if len(kept) == max_rows:
                    raise MatrixError(
                        f"{path.name}: keeps more than {max_rows:,} rows; a campaign takes at most "
                        f"{max_rows:,} (CASTFLOW_CAMPAIGN__MAX_ROWS); add a limit or filters"
                    )
                kept.append((index, picks))
            elif len(kept) < matrix.limit:  # reservoir sampling: the same seed keeps the same rows
                kept.append((index, picks))
            else:
                j = rng.randrange(seen)
                if j < matrix.limit:
                    kept[j] = (index, picks)
        kept.sort(key=lambda k: k[0])
    if not kept:
        raise MatrixError(f"{path.name}: include/exclude leave no row")
    variants: list[Variant] = []
    names: dict[str, Variant] = {}
    for n, (_index, picks) in enumerate(kept, start=1):
        values = {axis: axes[axis][i] for axis, i in picks.items()}
        vid = variant_id(values)
        fields = dict.fromkeys(OTHER_FIELDS, "") | {FIELD[a]: values.get(a, "") for a in AXES}
        fields |= {"campaign": campaign, "variant": vid, "n": str(n)}
        name = render_name(matrix.name, fields)
        variant = Variant(picks, vid, name)
        if not name:
            raise MatrixError(f"{path.name}: name: the template {matrix.name!r} gives an empty name")
        if len(name) > MAX_NAME:
            raise MatrixError(
                f"{path.name}: name: {name[:60]}... is {len(name)} characters; names take at most {MAX_NAME} "
                "(shorter ids or fewer fields in the template)"
            )
        other = names.get(name.lower())
        if other is not None:
            named = repr(name) if other.name == name else f"{other.name!r} and {name!r} (letter case aside)"
            raise MatrixError(
                f"{path.name}: name: two rows are named {named} ({_told(other, axes)} and "
                f"{_told(variant, axes)}); put the axes that differ, or {{variant}}, in the template"
            )
        names[name.lower()] = variant
        variants.append(variant)
    columns, rows = _sheet(matrix, axes, variants, path)
    return Expansion(matrix, campaign, count, variants, columns, rows)


def _told(variant: Variant, axes: dict[str, list[str]]) -> str:
    return ", ".join(f"{FIELD[a]} {axes[a][i]}" for a, i in variant.picks.items())


def _sheet(
    matrix: Matrix, axes: dict[str, list[str]], variants: list[Variant], path: Path
) -> tuple[list[str], list[list[str]]]:
    """The sheet of the rows: what the pipeline reads, then one column per axis (the ids)."""
    columns = [
        "row_id",
        "name",
        "actor",
        "script",
        "speech_parts",
        "scene",
        "product",
        "ratio",
        "captions",
        "formats",
        "resolution",
    ]
    columns += ["brand"]
    columns += [f"{FIELD[a]}_id" for a in ("hooks", "bodies", "scenes", "products") if a in axes]
    rows = []
    for v in variants:
        hook = matrix.hooks[v.picks["hooks"]] if "hooks" in v.picks else None
        body = matrix.bodies[v.picks["bodies"]] if "bodies" in v.picks else None
        scene = matrix.scenes[v.picks["scenes"]] if "scenes" in v.picks else None
        cells = {
            "row_id": v.variant_id,
            "name": v.name,
            "actor": matrix.actors[v.picks["actors"]],
            "script": " ".join(" ".join(p.text.split()) for p in (hook, body) if p is not None),
            "scene": scene.prompt if scene else "",
            "ratio": matrix.ratios[v.picks["ratios"]] if "ratios" in v.picks else "",
            "product": matrix.products[v.picks["products"]].image if "products" in v.picks else "",
            "captions": matrix.captions[v.picks["captions"]] if "captions" in v.picks else "",
            "formats": matrix.formats[v.picks["formats"]] if "formats" in v.picks else "",
            "resolution": matrix.resolution or "",
            "brand": matrix.brand or "",
            "speech_parts": (
                f"{' '.join(hook.text.split())}|{' '.join(body.text.split())}"
                if matrix.speech == "parts" and hook and body
                else ""
            ),
            "hook_id": hook.id if hook else "",
            "body_id": body.id if body else "",
            "scene_id": scene.id if scene else "",
            "product_id": matrix.products[v.picks["products"]].id if "products" in v.picks else "",
        }
        rows.append([cells[c] for c in columns])
    keep = [
        i
        for i, c in enumerate(columns)
        if c in ("row_id", "name", "actor", "script") or any(r[i] for r in rows)
    ]
    return [columns[i] for i in keep], [[r[i] for i in keep] for r in rows]
