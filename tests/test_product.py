"""Product in hand: a product column and matrix axis; the image edit receives the portrait and the product
together (nano banana's image_urls), the stage key holds the product's content, and the embedded editor
draws the product visibly in the actor's hand."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from castflow import matrix, pipeline
from castflow.actors import ensure_sample_actors
from castflow.cli import app
from castflow.fakes import running_fakes
from castflow.models import VideoRequest
from castflow.portraits import hold_product
from castflow.runtime import Runtime
from castflow.settings import Settings
from castflow.sheets import ActorInfo, read_sheet

MAGENTA = (230, 20, 200)


def product_png(
    path: Path, colour: tuple[int, int, int] = MAGENTA, size: tuple[int, int] = (120, 200)
) -> Path:
    picture = Image.new("RGB", size, colour)
    picture.paste((255, 255, 255), (20, 60, size[0] - 20, 110))  # a label
    picture.save(path)
    return path


def magenta_share(picture: Image.Image) -> float:
    px = np.asarray(picture.convert("RGB")).astype(int)
    near = (abs(px[..., 0] - 230) < 25) & (px[..., 1] < 60) & (abs(px[..., 2] - 200) < 25)
    return float(near.mean())


def test_the_embedded_editor_puts_the_product_in_view() -> None:
    scene = Image.new("RGB", (480, 854), (90, 120, 160))
    with Image.open(product_png(Path("/tmp/castflow-product-test.png"))) as held:
        out = hold_product(scene, held.convert("RGBA"))
    assert out.size == scene.size
    share = magenta_share(out)
    assert 0.02 < share < 0.15  # visible, and not covering the picture
    rows, cols = np.nonzero(np.all(np.asarray(out) == MAGENTA, axis=-1))
    assert cols.min() > 480 * 0.5  # in the lower right of the centre, where a hand is
    assert rows.min() > 854 * 0.5
    assert hold_product(scene, held.convert("RGBA")).tobytes() == out.tobytes()  # deterministic


def test_the_sheet_checks_the_product_like_a_portrait(tmp_path: Path) -> None:
    product_png(tmp_path / "serum.png")
    Image.new("RGB", (20, 20)).save(tmp_path / "tiny.png")
    (tmp_path / "notes.png").write_text("not a picture")
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(
        "actor,script,scene,product\n"
        "maya,Hi.,a kitchen,serum.png\n"
        "maya,Hi.,a kitchen,missing.png\n"
        "maya,Hi.,a kitchen,tiny.png\n"
        "maya,Hi.,a kitchen,notes.png\n"
        "maya,Hi.,a kitchen,../outside.png\n"
        "maya,Hi.,a kitchen,http://127.0.0.1:9/p.png\n"
    )
    (tmp_path.parent / "outside.png").write_bytes((tmp_path / "serum.png").read_bytes())
    s = read_sheet(
        sheet,
        settings=Settings(data_dir=tmp_path / "d"),
        actors={"maya": ActorInfo("maya", "espeak-ng", "local")},
    )
    assert [r.request.product for r in s.rows] == [str((tmp_path / "serum.png").resolve())]
    problems = [str(p) for p in s.errors]
    assert problems[0].startswith("row 3, column product: file 'missing.png'")
    assert problems[1] == "row 4, column product: 'tiny.png' is 20x20; at least 64x64 is needed"
    assert (
        problems[2] == "row 5, column product: 'notes.png' is not a readable image (UnidentifiedImageError)"
    )
    assert problems[3].startswith("row 6, column product: file '../outside.png'")
    assert problems[4].startswith("row 7, column product: http://127.0.0.1:9/p.png refused: host '127.0.0.1'")


def test_the_stage_key_holds_the_products_content(rt: Runtime, tmp_path: Path) -> None:
    ensure_sample_actors(rt)
    one = product_png(tmp_path / "a.png")
    same = tmp_path / "elsewhere" / "b.png"
    same.parent.mkdir()
    same.write_bytes(one.read_bytes())
    other = product_png(tmp_path / "c.png", colour=(20, 200, 40))

    def key(product: Path | None) -> str:
        req = VideoRequest(
            actor="maya", script="Hi there.", scene="a kitchen", product=str(product) if product else None
        )
        video = pipeline.prepare_video(rt, req)
        unit = next(u for u in pipeline.plan(video) if u.name == "scene_variant")
        assert unit.key is not None
        return unit.key(rt, video, {})

    assert key(one) == key(same)  # by content, not path
    assert key(one) != key(other)
    assert key(one) != key(None)


@pytest.fixture
def paid_rt(fakes_rt: Runtime) -> Runtime:
    return fakes_rt


@pytest.mark.flow
def test_a_product_axis_end_to_end_on_the_fakes(
    paid_rt: Runtime, tmp_path: Path, prefect_server: None
) -> None:
    product_png(tmp_path / "serum.png")
    product_png(tmp_path / "cream.png", colour=(20, 200, 40))
    path = tmp_path / "matrix.yaml"
    path.write_text(
        textwrap.dedent(
            """
            campaign: held
            bodies: [{id: b1, text: "This serum changed my mornings, honestly."}]
            actors: [nia]
            scenes: [{id: bath, prompt: a bright bathroom}]
            products: [{id: serum, image: serum.png}, {id: cream, image: cream.png}]
            """
        ),
        encoding="utf-8",
    )
    expanded = matrix.expand(path)
    assert [dict(zip(expanded.columns, r, strict=True))["name"] for r in expanded.rows] == [
        "held_b1_nia_bath_serum",
        "held_b1_nia_bath_cream",
    ]
    fal = running_fakes()["fal"]
    before = set(fal.jobs)  # the fakes serve the whole test session
    done = CliRunner().invoke(app, ["campaign", "run", str(path)])
    assert done.exit_code == 0, done.output
    edits = [j for k, j in fal.jobs.items() if "edit" in j.model and k not in before]
    assert len(edits) == 2
    assert all(len(j.payload["image_urls"]) == 2 for j in edits)  # the portrait, then the product
    assert all("holds the product from the second image" in j.payload["prompt"] for j in edits)
    assert all(j.payload["prompt"].startswith("a bright bathroom.") for j in edits)
    with paid_rt.session() as s:
        from sqlalchemy import select

        from castflow.db.tables import ImageVariant

        images = s.scalars(select(ImageVariant.image_key)).all()
    shares = sorted(magenta_share(Image.open(paid_rt.storage.local_path(k))) for k in images)
    assert shares[0] < 0.001  # the cream's scene: no serum in it
    assert shares[1] > 0.01  # the serum's scene shows the serum


def textured_product(path: Path, seed: int = 1) -> Path:
    """A product with a label to recognise (bands, a disc, words), as real packaging has."""
    import random

    from PIL import ImageDraw, ImageFont

    rng = random.Random(seed)
    img = Image.new("RGB", (300, 480), (200, 60, 40))
    d = ImageDraw.Draw(img)
    for y in (30, 150, 330):
        d.rectangle(
            (0, y, 300, y + rng.randrange(20, 50)), fill=(rng.randrange(256), 200, rng.randrange(256))
        )
    d.ellipse((90, 60, 210, 180), fill=(30, 30, 160), outline=(0, 0, 0), width=5)
    d.text((20, 250), "GLOW", fill=(255, 255, 255), font=ImageFont.load_default(size=60), stroke_width=2,
           stroke_fill=(0, 0, 0))  # fmt: skip
    d.text((20, 400), "serum 30ml", fill=(0, 0, 0), font=ImageFont.load_default(size=34))
    img.save(path)
    return path


def test_the_product_check_finds_a_held_product_and_misses_an_absent_one(tmp_path: Path) -> None:
    from castflow.portraits import SAMPLE_LOOKS, compose_scene, draw_portrait
    from castflow.product_check import find_product

    product = textured_product(tmp_path / "glow.png")
    scene = compose_scene(draw_portrait(SAMPLE_LOOKS["maya"]), "a sunny kitchen", 1)
    with Image.open(product) as held:
        hold_product(scene, held.convert("RGBA")).save(tmp_path / "with.png")
    scene.save(tmp_path / "without.png")
    found = find_product(tmp_path / "with.png", product)
    assert (found.checked, found.found) == (True, True), found
    missed = find_product(tmp_path / "without.png", product)
    assert (missed.checked, missed.found) == (True, False), missed
    assert missed.describe().startswith("product not found in the scene")
    plain = find_product(tmp_path / "with.png", product_png(tmp_path / "flat.png"))
    assert plain.checked is False  # a flat colour cannot be recognised: not judged, no warning
    assert "too little texture" in plain.describe()


@pytest.mark.flow
def test_a_product_missing_from_its_scene_is_a_warning_on_the_row(
    rt: Runtime, tmp_path: Path, prefect_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import csv

    from castflow.providers import local

    ensure_sample_actors(rt)
    textured_product(tmp_path / "glow.png")
    sheet = tmp_path / "held.csv"
    sheet.write_text("row_id,actor,script,scene,product\nshown,maya,Hi there.,a kitchen,glow.png\n")
    done = CliRunner().invoke(app, ["campaign", "run", str(sheet)])
    assert done.exit_code == 0, done.output
    assert "warning" not in done.output  # held, and found
    # An editor that leaves the product out (as a real edit sometimes does): the row warns, and succeeds.
    monkeypatch.setattr(local, "hold_product", lambda scene, _product: scene)
    sheet.write_text("row_id,actor,script,scene,product\nforgot,maya,Hi there.,a beach,glow.png\n")
    done = CliRunner().invoke(app, ["campaign", "run", str(sheet), "--name", "held2"])
    assert done.exit_code == 0, done.output
    assert "warning   row 2 (forgot): product not found in the scene" in done.output
    assert "held2: 1 succeeded" in done.output
    manifest = rt.settings.data_dir / "manifests" / "held2-manifest.csv"
    (record,) = [r for r in csv.DictReader(manifest.open()) if r["format"] == "source"]
    assert record["status"] == "succeeded"
    assert record["warning"].startswith("product not found in the scene")
