"""How well castflow.product_check tells a scene with the product from one without: scenes where the truth
is known. Each product is a generated label (bands, a logo disc, text); each scene is a painted backdrop
with the drawn actor; the product is pasted at 12-30 % of the frame's width, turned up to 25 degrees,
relit (x0.7-1.3), blurred (up to 1.5 px) and JPEG-compressed (quality 60-90), as an image edit would
redraw it. Negatives: the same scenes with another product, or none. Prints one JSON object:
true-positive rate, false-positive rate, the inlier counts of each class, and the time per check.

``python bench/product_bench.py [--scenes 40] [--seed 7]``
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from castflow.portraits import SAMPLE_LOOKS, compose_scene, draw_portrait
from castflow.product_check import find_product

WORDS = ["GLOW", "SERUM", "DAILY", "CREAM", "BREW", "FRESH", "PURE", "NIGHT", "SPORT", "MINT"]


def make_product(rng: random.Random, words: list[str], size: tuple[int, int] = (300, 480)) -> Image.Image:
    w, h = size
    base = tuple(rng.randrange(40, 230) for _ in range(3))
    img = Image.new("RGB", size, base)  # type: ignore[arg-type]
    d = ImageDraw.Draw(img)
    for _ in range(rng.randrange(2, 5)):
        y = rng.randrange(0, h - 40)
        d.rectangle((0, y, w, y + rng.randrange(10, 60)), fill=tuple(rng.randrange(256) for _ in range(3)))
    cx, cy, r = rng.randrange(60, w - 60), rng.randrange(80, h // 2), rng.randrange(25, 55)
    d.ellipse(
        (cx - r, cy - r, cx + r, cy + r),
        fill=tuple(rng.randrange(256) for _ in range(3)),
        outline=(0, 0, 0),
        width=4,
    )
    font = ImageFont.load_default(size=44)
    d.text((20, h * 0.55), words[0], fill=(255, 255, 255), font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    d.text((20, h * 0.72), words[1].lower() + f" {rng.randrange(10, 99)}0ml", fill=(10, 10, 10),
           font=ImageFont.load_default(size=28))  # fmt: skip
    return img


def paste(scene: Image.Image, product: Image.Image, rng: random.Random) -> Image.Image:
    out = scene.copy()
    width = round(out.width * rng.uniform(0.12, 0.30))
    held = product.resize((width, round(width * product.height / product.width)), Image.Resampling.LANCZOS)
    gain = rng.uniform(0.7, 1.3)
    held = held.point(lambda v: min(255, int(v * gain)))
    held = held.convert("RGBA").rotate(rng.uniform(-25, 25), expand=True, resample=Image.Resampling.BICUBIC)
    x = rng.randrange(0, max(1, out.width - held.width))
    y = rng.randrange(out.height // 3, max(out.height // 3 + 1, out.height - held.height))
    out.paste(held, (x, y), held)
    return out


def degrade(img: Image.Image, rng: random.Random) -> Image.Image:
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))
    buffer = io.BytesIO()
    img.convert("RGB").save(buffer, "JPEG", quality=rng.randrange(60, 91))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)  # noqa: S311 - test data
    looks = list(SAMPLE_LOOKS)
    prompts = [
        "a sunny kitchen",
        "a gym with mirrors",
        "a beach at golden hour",
        "a bookstore aisle",
        "a neon street",
    ]
    positives: list[int] = []
    negatives: list[int] = []
    unchecked = 0
    seconds: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for i in range(args.scenes):
            portrait = draw_portrait(SAMPLE_LOOKS[looks[i % len(looks)]])
            scene = compose_scene(portrait, rng.choice(prompts), i, rng.choice([None, "1:1", "4:5", "16:9"]))
            names = rng.sample(WORDS, 4)  # the other product shares no word with this one
            product, other = make_product(rng, names[:2]), make_product(rng, names[2:])
            product.save(work / "product.png")
            cases = [
                (degrade(paste(scene, product, rng), rng), True),
                (degrade(paste(scene, other, rng), rng), False),
                (degrade(scene, rng), False),
            ]
            for picture, truth in cases:
                picture.save(work / "scene.jpg", quality=95)
                t0 = time.perf_counter()
                match = find_product(work / "scene.jpg", work / "product.png")
                seconds.append(time.perf_counter() - t0)
                if not match.checked:
                    unchecked += 1
                    continue
                (positives if truth else negatives).append(match.inliers if match.found else -match.inliers)
    tpr = sum(v > 0 for v in positives) / max(1, len(positives))
    fpr = sum(v > 0 for v in negatives) / max(1, len(negatives))
    report: dict[str, object] = {
        "scenes": args.scenes,
        "seed": args.seed,
        "with_product": len(positives),
        "without": len(negatives),
        "unchecked": unchecked,
        "true_positive_rate": round(tpr, 3),
        "false_positive_rate": round(fpr, 3),
        "inliers_found_median": statistics.median([abs(v) for v in positives]) if positives else None,
        "inliers_missed": sorted(abs(v) for v in positives if v <= 0),
        "inliers_negatives_max": max((abs(v) for v in negatives), default=0),
        "check_ms_median": round(1000 * statistics.median(seconds), 1),
        "check_ms_max": round(1000 * max(seconds), 1),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
