"""Campaign sheets: read a CSV, validate every row before any money is spent.

A sheet has one row per video. Columns (header names are case-insensitive, surrounding spaces ignored):

``row_id`` (optional), ``actor``, ``script`` or ``audio`` (exactly one per row), ``scene`` (optional edit
prompt), ``image_variant_id``, ``resolution``, ``seed``, ``captions`` (optional). Any other column is kept
and carried through to the manifest.

Errors name the row as a spreadsheet shows it (the header is row 1; a quoted cell with line breaks is
still one row), the column and the reason, and all errors of a sheet are reported at once. Blank lines
(empty, or only separators and spaces) are not rows: skipped wherever they are, and noted once.

Records are split by Python's csv module rather than polars: it names the record of a wrong width
instead of failing the whole file, and reads CR-only files; the rows are validated one by one anyway.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

import httpx
from PIL import Image
from pydantic import ValidationError

from castflow import captions as captions_module
from castflow import finish, matrix, media
from castflow.hints import unknown_actor
from castflow.inputs import confined_file_problem, file_problem
from castflow.models import VideoRequest
from castflow.settings import Settings
from castflow.stages import control_characters, speakable

# A sheet's columns are the request's fields (castflow.models.VideoRequest) and the row id: a new field
# of the request is a new column, validated in _validate_row.
KNOWN_COLUMNS = ("row_id", *VideoRequest.model_fields)
_FIELDS = tuple(VideoRequest.model_fields)  # read once: the class attribute is a slow descriptor
_LEADING = "".join(chr(c) for c in range(33))  # spaces and control characters a spreadsheet skips
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_SUSPECT = frozenset(_LEADING + "=+-@")  # a formula-like cell starts with one of these (a quick look first)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
# The columns castflow writes into a campaign's manifest beside the sheet's own: a sheet column of one of
# these names would be overwritten there, so it is refused.
OUTPUT_COLUMNS = (
    "row",
    "format",  # one manifest record per output: source (the render), or an export profile
    "status",
    "failed_stage",
    "error",
    "video_key",
    "video_url",
    "audio_seconds",
    "video_seconds",
    "cost_usd",
    "music_licence",  # an output's brand music: where it comes from and what allows its use
    "warning",  # what the video's checks noticed (a product not found in its scene)
)
ROW_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TRUE = {"1", "true", "yes", "y", "on", "x"}
FALSE = {"", "0", "false", "no", "n", "off"}


@dataclass(frozen=True)
class SheetProblem:
    """One finding: the spreadsheet row (None: the whole sheet), the column, the reason."""

    row: int | None
    column: str | None
    reason: str
    severity: str = "error"  # error | warning

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column:
            where.append(f"column {self.column}")
        prefix = ", ".join(where) or "sheet"
        return f"{prefix}: {self.reason}" + (" (warning)" if self.severity == "warning" else "")


@dataclass(frozen=True, slots=True)
class SheetRow:
    """A valid row, resolved: its video request (an audio path made absolute) and the passthrough
    columns. The request is kept as its validated field values (a model instance per row would cost
    about 1 KB; sheets have 100,000 rows) and rebuilt on demand."""

    row: int  # spreadsheet row number (header is row 1)
    row_id: str
    values: tuple[Any, ...]  # VideoRequest's fields, in their order, as validated
    audio_seconds: float | None = None  # the audio file's length, measured by validation
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, row: int, row_id: str, request: VideoRequest, **more: Any) -> SheetRow:
        given = request.__dict__
        return cls(row, row_id, tuple(given[f] for f in _FIELDS), **more)

    @property
    def request(self) -> VideoRequest:
        """The row's video request (validated when the sheet was read). Validated again: pydantic's
        core does that faster than model_construct assembles a model in Python, and to the same values."""
        return VideoRequest.model_validate(dict(zip(_FIELDS, self.values, strict=True)))


def request_cells(request: VideoRequest) -> dict[str, str | int]:
    """The request as a sheet writes it (the inverse of reading a row): empty cells for what is not
    given, yes/no for flags."""
    cells: dict[str, str | int] = {}
    for name, value in request.model_dump().items():
        if value is None:
            cells[name] = ""
        elif isinstance(value, bool):
            cells[name] = "yes" if value else "no"
        elif isinstance(value, list | tuple):
            cells[name] = "|".join(str(v) for v in value)
        else:
            cells[name] = value
    return cells


@dataclass
class Sheet:
    """A read and validated sheet: its valid rows and every problem found."""

    name: str
    content_hash: str
    columns: list[str]
    rows: list[SheetRow]
    problems: list[SheetProblem]
    total_rows: int
    unreadable: bool = False  # reading stopped (a limit, broken quoting): every error is the sheet's
    default_name: str | None = None  # a matrix file's campaign name
    speech: str | None = None  # a matrix file's speech mode (whole or parts)

    @property
    def errors(self) -> list[SheetProblem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[SheetProblem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def invalid_rows(self) -> set[int]:
        return {p.row for p in self.errors if p.row is not None}

    @property
    def sheet_errors(self) -> list[SheetProblem]:
        """Errors that concern the whole sheet (nothing can run)."""
        return [p for p in self.errors if p.row is None or self.unreadable]


class SheetInvalid(Exception):
    """A sheet that cannot run as asked; ``problems`` lists every finding."""

    def __init__(self, sheet_name: str, problems: list[SheetProblem]) -> None:
        errors = [p for p in problems if p.severity == "error"]
        super().__init__(f"{sheet_name}: {len(errors)} error(s)\n" + "\n".join(f"  {p}" for p in errors))
        self.problems = problems


@dataclass(frozen=True)
class ActorInfo:
    """What validation needs to know about an actor."""

    key: str
    voice_model: str
    voice_provider: str


def is_formula_like(value: str) -> bool:
    """Cells that a spreadsheet would run as a formula when written back (CSV/XLSX injection, OWASP):
    starting with = + - @, a tab or a CR, also after leading spaces or control characters."""
    if not value:
        return False
    if value.startswith(("\t", "\r")):
        return True
    return value.lstrip(_LEADING).startswith(FORMULA_PREFIXES)


def escape_cell(value: str) -> str:
    """Neutralise a formula-like cell for CSV/XLSX outputs (OWASP: prefix a single quote)."""
    return "'" + value if is_formula_like(value) else value


# Files often sent in place of a CSV, by their first bytes.
_WORKBOOKS = (
    (b"PK\x03\x04", "an Excel workbook (.xlsx) or another zip archive"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Excel workbook (.xls)"),
    (b"%PDF", "a PDF"),
)


def _kind_problem(head: bytes) -> SheetProblem | None:
    """A workbook, an old .xls or a PDF sent in place of a CSV, named by its first bytes."""
    for magic, what in _WORKBOOKS:
        if head.startswith(magic):
            return SheetProblem(
                None, None, f"the file is {what}, not CSV: export the sheet as CSV UTF-8 (File > Save as)"
            )
    return None


def _not_utf8(source: BinaryIO) -> SheetProblem:
    """Where the file stops being UTF-8 (read again whole: only on this error, and the file is small)."""
    source.seek(0)
    data = source.read().removeprefix(b"\xef\xbb\xbf")
    try:
        data.decode("utf-8")
        where = ""
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        where = f" (undecodable byte 0x{data[exc.start]:02x} on line {line})"
    return SheetProblem(None, None, f"the file is not UTF-8 text{where}; save it as CSV UTF-8")


def _separator(text: TextIO) -> str:
    """Comma, semicolon or tab (cells copied from a spreadsheet), by which one splits the first line
    that is not blank into the most fields (a tie: the comma). Leaves ``text`` at its start."""
    first = ""
    for line in text:
        if line.strip():
            first = line
            break
    text.seek(0)
    fields = {sep: len(next(csv.reader([first], delimiter=sep), [])) for sep in (",", ";", "\t")}
    return max(fields, key=lambda sep: fields[sep])


def _ranges(rows: list[int]) -> str:
    """``[5, 6, 7, 9]`` as ``5-7, 9``."""
    spans: list[list[int]] = []
    for row in rows:
        if spans and row == spans[-1][1] + 1:
            spans[-1][1] = row
        else:
            spans.append([row, row])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


@dataclass(frozen=True)
class Records:
    """A sheet's normalised column names and its rows: (spreadsheet row number, cells)."""

    columns: list[str]
    rows: list[tuple[int, list[str]]]
    misshapen: int = 0  # rows of the wrong width: errors of their own, not in ``rows``

    @property
    def height(self) -> int:
        return len(self.rows) + self.misshapen


def read_records(
    source: BinaryIO, name: str, *, max_rows: int = 10**9, max_columns: int = 10**6, max_cell: int = 10**9
) -> tuple[Records | None, list[SheetProblem]]:
    """The sheet's records with normalised column names and each record's spreadsheet row number, or
    the problems.

    Records are split by the csv module (quoted line breaks stay in their cell; LF, CRLF and CR-only
    files alike), so a record of the wrong width is named by its row. Records that are empty or hold
    only separators and spaces are not rows: they are skipped, and reported once as a warning.

    The file is decoded as it is read, never held whole as text: a str in io.StringIO takes four bytes
    per character, which put a 32 MiB sheet past 300 MB of RSS.
    """
    kind = _kind_problem(source.read(8))
    if kind is not None:
        return None, [kind]
    source.seek(0)
    text = io.TextIOWrapper(source, encoding="utf-8-sig", newline="")
    records: list[list[str]] = []
    filled = 0  # records that are not blank lines: the header and the rows
    try:
        sep = _separator(text)
        for record in csv.reader(text, delimiter=sep, strict=True):
            filled += any(cell.strip() for cell in record)
            if filled > max_rows + 1:  # past the limit only counted, not kept: memory stays bounded
                continue
            if len(record) > max_columns:
                return None, [
                    SheetProblem(
                        len(records) + 1, None, f"has {len(record)} columns; the limit is {max_columns}"
                    )
                ]
            if any(len(cell) > max_cell for cell in record):
                longest = max(len(cell) for cell in record)
                return None, [
                    SheetProblem(
                        len(records) + 1, None, f"has a cell of {longest} characters; the limit is {max_cell}"
                    )
                ]
            records.append(record)
    except UnicodeDecodeError:
        return None, [_not_utf8(source)]
    except csv.Error as exc:  # "field larger than field limit" and malformed quoting
        return None, [SheetProblem(len(records) + 1, None, f"cannot read the CSV here: {exc}")]
    finally:
        text.detach()  # the caller closes its file
    if not filled:
        return None, [SheetProblem(None, None, "the sheet is empty")]
    if filled - 1 > max_rows:
        return None, [SheetProblem(None, None, f"the sheet has {filled - 1} rows; the limit is {max_rows}")]
    start = next((i for i, rec in enumerate(records) if any(c.strip() for c in rec)), None)
    if start is None:  # only separators and spaces
        return None, [SheetProblem(None, None, "the sheet is empty")]
    header = records[start]
    names = [c.strip().lower() for c in header]
    problems = []
    seen: dict[str, int] = {}
    for i in range(len(names)):
        if not names[i]:
            names[i] = f"column_{i + 1}"
        col = names[i]
        if col in seen:
            problems.append(
                SheetProblem(
                    start + 1, col, f"column {col!r} appears twice (columns {seen[col] + 1} and {i + 1})"
                )
            )
        seen[col] = i
    if problems:
        return None, problems
    width = len(names)
    rows: list[tuple[int, list[str]]] = []
    blank: list[int] = []
    for offset, record in enumerate(records[start + 1 :]):
        row = start + offset + 2  # the header is row 1 as the spreadsheet shows it
        if not any(cell.strip() for cell in record):
            blank.append(row)
        elif len(record) != width:
            problems.append(
                SheetProblem(
                    row,
                    None,
                    f"has {len(record)} fields; the header has {width} (a missing or extra {sep!r}?)",
                )
            )
        else:
            rows.append((row, record))
    if blank:
        problems.append(
            SheetProblem(None, None, f"{len(blank)} blank line(s) skipped (row {_ranges(blank)})", "warning")
        )
    # A row of the wrong width is an error of that row (the others are still validated, and run with
    # --skip-invalid), not of the sheet.
    misshapen = sum(p.severity == "error" for p in problems)
    del records  # the rows hold what is needed
    return Records(names, rows, misshapen), problems


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


if TYPE_CHECKING:
    from castflow.brand import Brand


class _Kits:
    """The brand kits a sheet's rows name, each read and checked once."""

    def __init__(self, default: Path | None) -> None:
        self.default = default.resolve() if default is not None else None
        self._found: dict[Path, Brand | str] = {}

    def _read(self, path: Path) -> Brand | str:
        if path not in self._found:
            from castflow.brand import BrandError, load_brand

            try:
                self._found[path] = load_brand(path)
            except BrandError as exc:
                self._found[path] = str(exc)
        return self._found[path]

    def problem(self, path: Path) -> str | None:
        found = self._read(path)
        return found if isinstance(found, str) else None

    def kit(self, path: Path | None) -> Brand | None:
        found = self._read(path) if path is not None else None
        return None if found is None or isinstance(found, str) else found


def read_sheet(
    path: Path,
    *,
    settings: Settings,
    actors: Mapping[str, ActorInfo],
    variant_owner: Callable[[str], str | None] | None = None,
    brand: Path | None = None,
    speech: str | None = None,
) -> Sheet:
    """Read and validate a sheet. Never raises for bad content: every problem is in ``Sheet.problems``.

    ``variant_owner(id)`` returns the actor key an image variant belongs to (None: unknown variant).
    ``brand``: the campaign's brand kit, worn by the rows whose ``brand`` cell is empty.
    """
    limits = settings.campaign
    if path.suffix.lower() in matrix.SUFFIXES:  # a matrix file: its rows, then the same checks as a CSV's
        return _read_matrix(
            path, settings=settings, actors=actors, variant_owner=variant_owner, brand=brand, speech=speech
        )
    why = file_problem(path)
    if why is None and path.stat().st_size > limits.max_sheet_bytes:
        why = (
            f"is {path.stat().st_size / 2**20:.1f} MiB; the limit is {limits.max_sheet_bytes / 2**20:.1f} MiB "
            "(CASTFLOW_CAMPAIGN__MAX_SHEET_BYTES)"
        )
    if why is not None:  # refused before a byte is read
        return Sheet(path.name, "", [], [], [SheetProblem(None, None, f"the sheet {why}")], 0)
    with path.open("rb") as source:
        digest = hashlib.file_digest(source, "sha256").hexdigest()  # as content_hash(bytes), streamed
        source.seek(0)
        frame, problems = read_records(
            source,
            path.name,
            max_rows=limits.max_rows,
            max_columns=limits.max_columns,
            max_cell=limits.max_cell_chars,
        )
    if frame is None:
        return Sheet(path.name, digest, [], [], problems, 0, unreadable=True)
    return _validate(path, digest, frame, problems, settings, actors, variant_owner, brand)


def _read_matrix(
    path: Path,
    *,
    settings: Settings,
    actors: Mapping[str, ActorInfo],
    variant_owner: Callable[[str], str | None] | None,
    brand: Path | None,
    speech: str | None = None,
) -> Sheet:
    """A matrix file's rows as a sheet (castflow.matrix), validated as a CSV's; a row's problems also
    name its variant. ``speech``: the matrix's speech mode as if it said so (the dry run's other cost)."""
    why = file_problem(path)
    if why is None and path.stat().st_size > settings.campaign.max_sheet_bytes:
        why = f"is larger than {settings.campaign.max_sheet_bytes / 2**20:.1f} MiB"
    if why is not None:
        return Sheet(path.name, "", [], [], [SheetProblem(None, None, f"the matrix file {why}")], 0)
    digest = content_hash(path.read_bytes())
    try:
        expansion = matrix.expand(path, actors=actors, max_rows=settings.campaign.max_rows, speech=speech)
    except matrix.MatrixError as exc:
        return Sheet(path.name, digest, [], [], [SheetProblem(None, None, str(exc))], 0, unreadable=True)
    frame = Records(expansion.columns, [(n, cells) for n, cells in enumerate(expansion.rows, start=2)])
    sheet = _validate(path, digest, frame, [], settings, actors, variant_owner, brand)
    names = {n: v.name for n, v in enumerate(expansion.variants, start=2)}
    sheet.problems = [
        replace(p, reason=f"{p.reason} (variant {names[p.row]})") if p.row in names else p
        for p in sheet.problems
    ]
    sheet.default_name = expansion.campaign
    sheet.speech = expansion.matrix.speech
    return sheet


def _validate(
    path: Path,
    digest: str,
    frame: Records,
    problems: list[SheetProblem],
    settings: Settings,
    actors: Mapping[str, ActorInfo],
    variant_owner: Callable[[str], str | None] | None,
    brand: Path | None,
) -> Sheet:
    columns = frame.columns
    if "actor" not in columns:
        problems.append(SheetProblem(1, "actor", "the sheet has no actor column"))
    if "script" not in columns and "audio" not in columns:
        problems.append(SheetProblem(1, "script", "the sheet has neither a script nor an audio column"))
    if frame.height == 0:
        problems.append(SheetProblem(None, None, "the sheet has a header but no rows"))
    if any(p.severity == "error" and (p.row is None or p.row == 1) for p in problems):
        return Sheet(path.name, digest, columns, [], problems, frame.height)

    rows: list[SheetRow] = []
    ids: dict[str, int] = {}
    names: dict[str, int] = {}
    extras = [c for c in columns if c not in KNOWN_COLUMNS]
    clashing = [c for c in extras if c in OUTPUT_COLUMNS]
    if clashing:  # their values would be overwritten by the outcome in the manifest
        problems += [
            SheetProblem(
                1, c, f"column {c!r} is one castflow writes in the manifest (the row's outcome); rename it"
            )
            for c in clashing
        ]
        return Sheet(path.name, digest, columns, [], problems, frame.height)
    kits = _Kits(brand)
    for line, cells in frame.rows:
        record = dict(zip(columns, cells, strict=True))
        row, row_problems = _validate_row(
            line, record, extras, path.parent, settings, actors, variant_owner, kits
        )
        row_id = (record.get("row_id") or "").strip() or f"row-{line}"
        first = ids.setdefault(row_id, line)
        if first != line:
            row_problems.append(
                SheetProblem(line, "row_id", f"duplicate row id {row_id!r} (first used in row {first})")
            )
        if named := (record.get("name") or "").strip():  # the output's file name: unique, any letter case
            first = names.setdefault(named.lower(), line)
            if not matrix.NAME.match(named):
                row_problems.append(
                    SheetProblem(
                        line,
                        "name",
                        f"{named!r} is not a file name (letters, digits, '.', '_', '-'; at most 120)",
                    )
                )
            elif first != line:
                row_problems.append(
                    SheetProblem(
                        line, "name", f"{named!r} is the name of row {first} too (letter case aside)"
                    )
                )
        problems.extend(row_problems)
        if row is not None and not any(p.severity == "error" for p in row_problems):
            rows.append(row)
    return Sheet(path.name, digest, columns, rows, problems, frame.height)


MAX_PRODUCT_BYTES = 20 * 2**20


def _product(text: str, base: Path, settings: Settings) -> tuple[Path | None, str | None]:
    """A row's product image, checked as a portrait is: a file beside the sheet (or in the input roots)
    or a URL fetched through the public-address guard into ``<data dir>/inputs/products`` (once per URL);
    an image of at least 64x64. Returns its path, or why it cannot be used."""
    if text.startswith(("http://", "https://")):
        from castflow.inputs import UrlRefused, fetch_public

        shown = text.split("?", 1)[0]
        folder = settings.data_dir / "inputs" / "products"
        path = folder / (hashlib.sha256(text.encode()).hexdigest()[:24] + ".img")
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            staged = path.with_suffix(".part")
            try:
                fetch_public(
                    text, staged, max_bytes=MAX_PRODUCT_BYTES, content_types=("image/",),
                    allow_private=settings.campaign.allow_private_urls,
                )  # fmt: skip
            except UrlRefused as exc:
                staged.unlink(missing_ok=True)
                return None, f"{shown} refused: {exc}"
            except httpx.HTTPError as exc:
                staged.unlink(missing_ok=True)
                return None, f"cannot download {shown}: {type(exc).__name__}"
            staged.replace(path)
    else:
        given = Path(text).expanduser()
        path = given if given.is_absolute() else base / given
        if (why := confined_file_problem(path, [base, *settings.campaign.input_roots])) is not None:
            return None, f"file {text!r} {why} (paths are relative to the sheet)"
        path = path.resolve()
        if path.stat().st_size > MAX_PRODUCT_BYTES:
            return None, f"file {text!r} is larger than {MAX_PRODUCT_BYTES // 2**20} MB"
    try:
        with Image.open(path) as img:
            img.load()
            if img.width < 64 or img.height < 64:
                return None, f"{text!r} is {img.width}x{img.height}; at least 64x64 is needed"
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return None, f"{text!r} is not a readable image ({type(exc).__name__})"
    return path, None


def _validate_row(
    line: int,
    record: Mapping[str, str | None],
    extras: list[str],
    base: Path,
    settings: Settings,
    actors: Mapping[str, ActorInfo],
    variant_owner: Callable[[str], str | None] | None,
    kits: _Kits,
) -> tuple[SheetRow | None, list[SheetProblem]]:
    problems: list[SheetProblem] = []

    def cell(name: str) -> str:
        return (record.get(name) or "").strip()

    def error(column: str | None, reason: str) -> None:
        problems.append(SheetProblem(line, column, reason))

    for column, value in record.items():
        if value and value[0] in _SUSPECT and is_formula_like(value) and column != "seed":
            problems.append(
                SheetProblem(
                    line,
                    column,
                    "starts like a spreadsheet formula; kept as text and escaped in CSV/XLSX outputs",
                    "warning",
                )
            )

    # Line breaks and tabs are text inside a quoted script or scene (they become spaces); any other
    # control character (NUL, escape sequences) is refused before it reaches the database or a file.
    if control_characters("".join(v or "" for v in record.values())):  # one look per row, then per cell
        for column, value in record.items():
            bad = control_characters(value or "", allow="\n\r\t" if column in ("script", "scene") else "")
            if bad:
                error(column, f"contains control characters ({', '.join(bad[:5])}); remove them")

    row_id = cell("row_id") or f"row-{line}"
    if not ROW_ID.match(row_id):
        error("row_id", f"{row_id!r} is not a valid row id (letters, digits, '.', '_', '-'; at most 64)")

    actor_key = cell("actor")
    actor = actors.get(actor_key)
    if not actor_key:
        error("actor", "is empty")
    elif actor is None:
        error("actor", unknown_actor(actor_key, actors))

    script = " ".join(cell("script").split()) or None
    if not script and (parts := cell("speech_parts")):  # the parts said one after the other
        script = " ".join(parts.replace("|", " ").split()) or None
    audio_text = cell("audio") or None
    audio: Path | None = None
    audio_seconds: float | None = None
    if not script and not audio_text:
        error("script", "give a script or an audio file (both are empty)")
    elif script and not speakable(script):
        error(
            "script",
            "has nothing to say (no letter or digit: only spaces, punctuation or invisible characters)",
        )
    elif script and not audio_text:  # spoken (with an audio file, the script is what it says)
        limit = settings.script_limit(actor.voice_model if actor else None)
        if len(script) > limit:
            model = actor.voice_model if actor else "the voice"
            error("script", f"is {len(script)} characters long; {model} takes at most {limit}")
    elif audio_text:
        given = Path(audio_text).expanduser()
        audio = given if given.is_absolute() else base / given
        why = confined_file_problem(audio, [base, *settings.campaign.input_roots])
        if why is not None:
            error("audio", f"file {audio_text!r} {why} (paths are relative to the sheet)")
        else:
            audio = audio.resolve()
            try:
                audio_seconds = media.decode_audio(
                    audio, max_seconds=settings.pipeline.max_audio_seconds
                ).seconds
            except media.MediaError as exc:
                error("audio", f"file {audio_text!r} is unreadable or too long: {exc}")
            else:
                if audio_seconds < 0.2:
                    error("audio", f"file {audio_text!r} is too short ({audio_seconds:.2f} s)")

    product: Path | None = None
    if product_text := cell("product"):
        product, why = _product(product_text, base, settings)
        if why is not None:
            error("product", why)

    scene = cell("scene") or None
    if scene is not None and len(scene) > (prompt_limit := settings.prompt_limit(settings.image_model)):
        error("scene", f"is {len(scene)} characters long; the image edit takes at most {prompt_limit}")
    variant = cell("image_variant_id") or None
    if scene and variant:
        error("scene", "give a scene or an image_variant_id, not both")
    if variant:
        owner = variant_owner(variant) if variant_owner else None
        if owner is None:
            error("image_variant_id", f"unknown image variant {variant!r}")
        elif actor_key and owner != actor_key:
            error(
                "image_variant_id", f"image variant {variant!r} belongs to actor {owner!r}, not {actor_key!r}"
            )

    resolution = cell("resolution").lower() or settings.pipeline.default_resolution
    if resolution not in ("480p", "720p"):
        error("resolution", f"{cell('resolution')!r} is not a resolution (480p or 720p)")

    seed = 0
    seed_text = cell("seed")
    if seed_text:
        if not _DIGITS.fullmatch(seed_text):  # int() would take "٣" and "1_000" too
            error("seed", f"{seed_text!r} is not a whole number (digits 0-9 only, 0 to 2147483647)")
        else:
            seed = int(seed_text)
            if not 0 <= seed <= 2**31 - 1:
                error("seed", f"{seed} is out of range (0 to 2147483647)")

    captions_text = cell("captions").lower()
    captions = "clean" if captions_text in TRUE else "no" if captions_text in FALSE else captions_text
    if captions not in ("no", *captions_module.STYLE_NAMES):
        styles = ", ".join(captions_module.STYLE_NAMES)
        error("captions", f"{cell('captions')!r} is not a caption style ({styles}, yes or no)")
    elif captions != "no" and script and (lacking := captions_module.missing_glyphs(script, captions)):
        error("captions", lacking)

    kit_path: Path | None = None
    if brand_text := cell("brand"):
        given = Path(brand_text).expanduser()
        kit_path = given if given.is_absolute() else base / given
        why = confined_file_problem(kit_path, [base, *settings.campaign.input_roots])
        if why is not None:
            error("brand", f"file {brand_text!r} {why} (paths are relative to the sheet)")
            kit_path = None
        else:
            kit_path = kit_path.resolve()
    else:
        kit_path = kits.default
    if kit_path is not None and (why := kits.problem(kit_path)):
        error("brand", why)

    formats, unknown_formats = finish.parse_formats(cell("formats"))
    if unknown_formats:
        error(
            "formats",
            f"{unknown_formats[0]!r} is not an export profile ({', '.join(finish.NAMES)}; join several with |)",
        )
    else:  # the hook line and call to action must be drawable on every profile the row makes
        kit = kits.kit(kit_path)
        made = [f for f in formats if f != "source"] or list(
            kit.formats if kit else settings.pipeline.default_formats
        )
        made = [f for f in made if f in finish.PROFILES]
        if made and (
            why := finish.dressing_problem(kit, cell("hook_text") or None, cell("cta") or None, made)
        ):
            column, _, reason = why.partition(": ")
            error(column, reason)

    if any(p.severity == "error" for p in problems):
        return None, problems
    checked: dict[str, object] = {  # the fields checked above, against the library and the files
        "actor": actor_key,
        "script": script,
        "audio": str(audio) if audio else None,
        "scene": scene,
        "image_variant_id": variant,
        "resolution": resolution,
        "seed": seed,
        "captions": captions,
        "formats": tuple(formats),
        "brand": str(kit_path) if kit_path else None,
        "product": str(product) if product else None,
    }
    # Any other field of the request is parsed and validated by the model itself: a new column is a new
    # field of VideoRequest (with its validator), nothing here.
    others = {name: cell(name) for name in _FIELDS if name not in checked and cell(name)}
    try:
        request = VideoRequest.model_validate({**checked, **others})
        for field_name, why in request.ignored():  # the same words as the CLI's
            problems.append(SheetProblem(line, field_name, why.replace("video", "row"), "warning"))
    except ValidationError as exc:  # a rule of the request that the checks above do not know
        for err in exc.errors():
            where = str(err["loc"][0]) if err["loc"] else None
            message = err["msg"].removeprefix("Value error, ")
            named, _, reason = message.partition(": ")
            if where is None and named in _FIELDS:  # a rule of the whole request that names its field
                where, message = named, reason
            problems.append(SheetProblem(line, where, message))
        return None, problems
    extra = {name: record.get(name) or "" for name in extras}
    return SheetRow.of(line, row_id, request, audio_seconds=audio_seconds, extra=extra), problems
