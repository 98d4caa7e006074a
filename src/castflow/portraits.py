"""Procedural pictures: the sample actors' portraits and the scenes of the local image editor."""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from castflow.models import Mouth

PORTRAIT_SIZE = (720, 1280)
KEY_COLOUR = (0, 177, 64)  # a studio green: the drawn portraits stand on it so scenes can replace it
Colour = tuple[int, int, int]


@dataclass(frozen=True)
class Look:
    skin: Colour
    hair: Colour
    shirt: Colour
    eyes: Colour
    lips: Colour
    long_hair: bool
    beard: bool = False


SAMPLE_LOOKS: dict[str, Look] = {
    "maya": Look((224, 172, 138), (40, 26, 20), (32, 150, 160), (70, 45, 30), (178, 84, 92), long_hair=True),
    "leo": Look((198, 134, 96), (92, 58, 36), (230, 120, 40), (60, 90, 60), (150, 80, 70), False, beard=True),
    "ava": Look(
        (245, 208, 184), (226, 190, 110), (120, 80, 170), (60, 110, 170), (200, 90, 110), long_hair=True
    ),
}

# Where the drawn mouth sits, as fractions of the portrait (same for every drawn look).
SAMPLE_MOUTH = Mouth(x=0.5, y=0.505, width=0.13)


def draw_portrait(look: Look, size: tuple[int, int] = PORTRAIT_SIZE) -> Image.Image:
    """A friendly cartoon head-and-shoulders portrait on the key colour, drawn at 2x and downsampled."""
    w, h = size[0] * 2, size[1] * 2
    img = Image.new("RGB", (w, h), KEY_COLOUR)
    d = ImageDraw.Draw(img)
    cx = w // 2
    # shoulders and shirt
    d.rounded_rectangle(
        (int(w * 0.12), int(h * 0.68), int(w * 0.88), int(h * 1.05)), radius=int(w * 0.18), fill=look.shirt
    )
    # neck
    d.rectangle(
        (cx - int(w * 0.08), int(h * 0.52), cx + int(w * 0.08), int(h * 0.70)), fill=_shade(look.skin, 0.9)
    )
    d.polygon(
        [(cx - int(w * 0.09), int(h * 0.68)), (cx, int(h * 0.74)), (cx + int(w * 0.09), int(h * 0.68))],
        fill=_shade(look.skin, 0.9),
    )
    # long hair behind the head
    if look.long_hair:
        d.rounded_rectangle(
            (cx - int(w * 0.27), int(h * 0.24), cx + int(w * 0.27), int(h * 0.66)),
            radius=int(w * 0.2),
            fill=look.hair,
        )
    # ears and head
    for side in (-1, 1):
        ex = cx + side * int(w * 0.215)
        d.ellipse(
            (ex - int(w * 0.04), int(h * 0.40), ex + int(w * 0.04), int(h * 0.47)),
            fill=_shade(look.skin, 0.95),
        )
    d.ellipse((cx - int(w * 0.22), int(h * 0.26), cx + int(w * 0.22), int(h * 0.58)), fill=look.skin)
    # hair on top
    d.chord(
        (cx - int(w * 0.235), int(h * 0.235), cx + int(w * 0.235), int(h * 0.42)), 180, 360, fill=look.hair
    )
    if look.beard:
        d.chord(
            (cx - int(w * 0.2), int(h * 0.40), cx + int(w * 0.2), int(h * 0.585)),
            0,
            180,
            fill=_shade(look.hair, 1.1),
        )
    # eyes, brows, nose
    for side in (-1, 1):
        ex = cx + side * int(w * 0.085)
        ey = int(h * 0.41)
        d.ellipse(
            (ex - int(w * 0.045), ey - int(h * 0.016), ex + int(w * 0.045), ey + int(h * 0.016)),
            fill=(250, 250, 250),
        )
        d.ellipse(
            (ex - int(w * 0.02), ey - int(h * 0.012), ex + int(w * 0.02), ey + int(h * 0.012)), fill=look.eyes
        )
        d.ellipse(
            (ex - int(w * 0.009), ey - int(h * 0.005), ex + int(w * 0.009), ey + int(h * 0.005)),
            fill=(15, 15, 15),
        )
        d.line(
            (ex - int(w * 0.05), int(h * 0.385) - side * 0, ex + int(w * 0.05), int(h * 0.38)),
            fill=_shade(look.hair, 0.8),
            width=int(w * 0.012),
        )
    d.line(
        (cx, int(h * 0.43), cx - int(w * 0.02), int(h * 0.475), cx + int(w * 0.01), int(h * 0.48)),
        fill=_shade(look.skin, 0.75),
        width=int(w * 0.008),
    )
    # closed mouth (the lip-sync renderer opens it)
    mx, my, mw = SAMPLE_MOUTH.x * w, SAMPLE_MOUTH.y * h, SAMPLE_MOUTH.width * w
    d.rounded_rectangle(
        (mx - mw / 2, my - h * 0.006, mx + mw / 2, my + h * 0.006), radius=int(h * 0.006), fill=look.lips
    )
    return img.resize(size, Image.Resampling.LANCZOS)


def _shade(colour: Colour, factor: float) -> Colour:
    return (
        min(255, int(colour[0] * factor)),
        min(255, int(colour[1] * factor)),
        min(255, int(colour[2] * factor)),
    )


# Scene palettes picked by words of the prompt: (top, bottom, floor, accents).
_PALETTES: list[tuple[tuple[str, ...], tuple[Colour, Colour, Colour, list[Colour]]]] = [
    (
        ("kitchen", "cafe", "café", "coffee", "bakery"),
        ((250, 226, 190), (226, 170, 110), (140, 96, 60), [(255, 240, 200), (200, 90, 60), (90, 140, 90)]),
    ),
    (
        ("beach", "sea", "ocean", "summer", "pool"),
        (
            (120, 190, 240),
            (200, 230, 250),
            (236, 214, 160),
            [(255, 250, 210), (40, 140, 200), (250, 180, 80)],
        ),
    ),
    (
        ("office", "desk", "work", "meeting", "studio"),
        ((210, 220, 232), (170, 185, 205), (90, 100, 115), [(250, 250, 255), (60, 90, 140), (120, 170, 120)]),
    ),
    (
        ("night", "city", "neon", "club", "street"),
        ((20, 18, 50), (60, 30, 90), (30, 30, 40), [(255, 60, 160), (60, 220, 255), (255, 210, 80)]),
    ),
    (
        ("park", "garden", "forest", "outdoor", "nature"),
        ((150, 205, 240), (200, 230, 200), (80, 150, 70), [(40, 110, 50), (250, 240, 120), (110, 170, 80)]),
    ),
    (
        ("gym", "fitness", "sport"),
        ((70, 70, 80), (120, 120, 130), (50, 50, 55), [(230, 60, 50), (240, 240, 240), (40, 160, 220)]),
    ),
    (
        ("bedroom", "home", "living", "sofa", "couch"),
        (
            (236, 222, 210),
            (200, 180, 165),
            (150, 110, 85),
            [(250, 245, 230), (170, 120, 150), (120, 150, 170)],
        ),
    ),
]


def _palette(prompt: str, rng: random.Random) -> tuple[Colour, Colour, Colour, list[Colour]]:
    words = prompt.lower()
    for keys, palette in _PALETTES:
        if any(k in words for k in keys):
            return palette
    rand: list[Colour] = [
        (rng.randrange(40, 250), rng.randrange(40, 250), rng.randrange(40, 250)) for _ in range(5)
    ]
    return rand[0], rand[1], rand[2], rand[2:]


def paint_scene(prompt: str, seed: int, size: tuple[int, int]) -> Image.Image:
    """A soft-focus background for ``prompt``: deterministic for (prompt, seed, size)."""
    digest = hashlib.sha256(f"{prompt}\x00{seed}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))  # noqa: S311 - pictures, not secrets
    top, bottom, floor, accents = _palette(prompt, rng)
    w, h = size
    img = Image.new("RGB", size, top)
    d = ImageDraw.Draw(img)
    horizon = int(h * rng.uniform(0.62, 0.74))
    for y in range(horizon):
        t = y / max(1, horizon - 1)
        d.line((0, y, w, y), fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)))
    d.rectangle((0, horizon, w, h), fill=floor)
    for _ in range(rng.randint(6, 11)):
        colour = rng.choice(accents)
        kind = rng.random()
        x, y = rng.randrange(0, w), rng.randrange(0, horizon)
        s = rng.randrange(w // 14, w // 4)
        if kind < 0.4:
            d.rectangle((x, y, x + s, y + int(s * rng.uniform(0.6, 1.6))), fill=colour)
        elif kind < 0.8:
            d.ellipse((x - s // 2, y - s // 2, x + s // 2, y + s // 2), fill=colour)
        else:
            d.polygon([(x, y), (x + s, y + s), (x - s, y + s)], fill=colour)
    return img.filter(ImageFilter.GaussianBlur(radius=max(2, w // 90)))


def subject_mask(portrait: Image.Image, tolerance: int = 60) -> Image.Image | None:
    """Mask (L, 255 = subject) of a portrait on a flat backdrop, or None when the backdrop isn't flat."""
    rgb = portrait.convert("RGB")
    w, h = rgb.size
    corners = [
        rgb.getpixel((1, 1)),
        rgb.getpixel((w - 2, 1)),
        rgb.getpixel((1, h // 2)),
        rgb.getpixel((w - 2, h // 2)),
    ]
    base = corners[0]
    assert isinstance(base, tuple)
    if any(
        not isinstance(c, tuple) or sum(abs(a - b) for a, b in zip(c, base, strict=False)) > 30
        for c in corners
    ):
        return None
    sentinel = (255, 0, 255) if base != (255, 0, 255) else (0, 255, 255)
    flood = rgb.copy()
    for xy in ((1, 1), (w - 2, 1), (1, h // 2), (w - 2, h // 2)):
        if flood.getpixel(xy) != sentinel:
            ImageDraw.floodfill(flood, xy, sentinel, thresh=tolerance)
    backdrop = np.all(np.asarray(flood) == np.array(sentinel, dtype=np.uint8), axis=-1)
    mask = Image.fromarray(np.where(backdrop, 0, 255).astype(np.uint8))
    return mask.filter(ImageFilter.GaussianBlur(1.2))


def vignette_mask(size: tuple[int, int]) -> Image.Image:
    """A soft ellipse (255 inside) that keeps the centre of a photo and lets the scene show at the edges."""
    w, h = size
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse((int(w * 0.08), int(h * 0.06), int(w * 0.92), int(h * 0.94)), fill=255)
    return mask.filter(ImageFilter.GaussianBlur(radius=max(4, w // 12)))


RATIOS: dict[str, tuple[int, int]] = {"9:16": (9, 16), "4:5": (4, 5), "1:1": (1, 1), "16:9": (16, 9)}
DEFAULT_RATIO = "9:16"


def reframe(size: tuple[int, int], ratio: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """A canvas of ``ratio`` that holds a picture of ``size`` whole, and where the picture goes: widened
    around it (the picture centred), or made taller above it (the picture at the bottom, as a person
    stands in a frame). Sides are even (video encoders need them so)."""
    w, h = size
    rw, rh = RATIOS[ratio]
    if w * rh <= h * rw:  # narrower than the ratio: widen
        canvas = (2 * math.ceil(h * rw / rh / 2), 2 * math.ceil(h / 2))
    else:  # wider: add sky above
        canvas = (2 * math.ceil(w / 2), 2 * math.ceil(w * rh / rw / 2))
    return canvas, ((canvas[0] - w) // 2, canvas[1] - h)


def reframe_mouth(mouth: Mouth, size: tuple[int, int], ratio: str) -> Mouth:
    """Where a portrait's mouth is once :func:`reframe` put the portrait on a canvas of ``ratio``."""
    (cw, ch), (left, top) = reframe(size, ratio)
    w, h = size
    return Mouth(x=(left + mouth.x * w) / cw, y=(top + mouth.y * h) / ch, width=mouth.width * w / cw)


def hold_product(scene: Image.Image, product: Image.Image) -> Image.Image:
    """The product in the actor's hand, as the embedded editor draws it: the picture whole, about a
    quarter of the frame's width, on a white card with a soft shadow, in the lower right of the centre
    (where a hand at chest height is), label (the picture itself) facing the camera. Deterministic."""
    out = scene.convert("RGB")
    w, h = out.size
    width = max(32, round(min(w, h) * 0.28))
    height = max(32, round(width * product.height / product.width))
    height = min(height, round(h * 0.35))
    width = round(height * product.width / product.height)
    picture = product.resize((width, height), Image.Resampling.LANCZOS)
    pad = max(3, width // 24)
    x = min(w - width - pad * 2, round(w * 0.56))
    y = min(h - height - pad * 2, round(h * 0.58))
    shadow = Image.new("L", out.size, 0)
    ImageDraw.Draw(shadow).rectangle(
        (x + pad, y + pad * 2, x + width + pad * 3, y + height + pad * 4), fill=120
    )
    out.paste((20, 20, 20), None, shadow.filter(ImageFilter.GaussianBlur(pad)))
    ImageDraw.Draw(out).rectangle((x, y, x + width + pad * 2, y + height + pad * 2), fill=(250, 250, 250))
    out.paste(picture, (x + pad, y + pad), picture if picture.mode == "RGBA" else None)
    return out


def compose_scene(portrait: Image.Image, prompt: str, seed: int, ratio: str | None = None) -> Image.Image:
    """The actor in the scene: the backdrop replaced (flat backdrops) or the scene around a vignette.
    With ``ratio``, the scene is painted on a canvas of that ratio around the actor (:func:`reframe`)."""
    rgb = portrait.convert("RGB")
    mask = subject_mask(rgb)
    if mask is None:
        mask = vignette_mask(rgb.size)
    if ratio is None:  # the portrait's own frame (what a 9:16 row asks: portraits are made so)
        return Image.composite(rgb, paint_scene(prompt, seed, rgb.size), mask)
    canvas, (left, top) = reframe(rgb.size, ratio)
    scene = paint_scene(prompt, seed, canvas)
    region = scene.crop((left, top, left + rgb.width, top + rgb.height))
    scene.paste(Image.composite(rgb, region, mask), (left, top))
    return scene
