"""Is the product in the scene? A cheap check of a scene variant made with a product (castflow's QC): SIFT
keypoints of the product image matched into the scene (Lowe's ratio test), then a RANSAC homography; the
product is found when enough matches agree on one placement of a plausible size and shape.

Measured by ``bench/product_bench.py`` on scenes where the truth is known (the product pasted at 12 to
30 % of the frame's width, turned up to 25 degrees, relit, blurred and JPEG-compressed; the negatives hold
another product or none). A product with too little texture to match (a flat colour) is not judged:
``Match.checked`` is False and no warning is given. The result is a warning on the row, never a failure:
the edit was paid for and a person should look.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIN_KEYPOINTS = 25  # a product with fewer is too plain to match: not judged
MIN_INLIERS = 10  # matches that agree on one placement
RATIO = 0.75  # Lowe's ratio test
MAX_CHROMA = 0.05  # how far the matched place's mean colour may be from the product's (chromaticity)
MAX_SIDE = 1024  # images are matched at most this large (cost)


@dataclass(frozen=True)
class Match:
    checked: bool  # the product had enough texture to be looked for
    found: bool
    inliers: int
    keypoints: int  # the product's

    def describe(self) -> str:
        if not self.checked:
            return f"product not checked: its image has too little texture ({self.keypoints} keypoints)"
        verdict = "found" if self.found else "not found"
        return f"product {verdict} in the scene ({self.inliers} matching points, {MIN_INLIERS} needed)"


def _rgb(path: Path, *, enlarge: bool = False) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        rgb = img.convert("RGB")
    scale = MAX_SIDE / max(rgb.size)
    if scale < 1.0 or enlarge:  # a scene is matched at MAX_SIDE: a small product keeps its detail
        rgb = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.LANCZOS)
    return np.asarray(rgb)


def _chroma(rgb: np.ndarray) -> np.ndarray:
    """The mean colour without its light: (r, g) / (r + g + b). An edit relights a product; it does not
    repaint it."""
    mean = rgb.reshape(-1, 3).astype(np.float64).mean(axis=0)
    return np.asarray(mean[:2] / max(1.0, float(mean.sum())))


def find_product(scene: Path, product: Path) -> Match:
    """Whether ``product`` appears in ``scene`` (see the module's notes)."""
    import cv2

    cv2.setRNGSeed(7)  # RANSAC draws at random: the same images, the same answer
    sift = cv2.SIFT_create()  # type: ignore[attr-defined]  # in cv2 since 4.4 (the patent ran out); no stub
    want_rgb, have_rgb = _rgb(product), _rgb(scene, enlarge=True)
    want, have = cv2.cvtColor(want_rgb, cv2.COLOR_RGB2GRAY), cv2.cvtColor(have_rgb, cv2.COLOR_RGB2GRAY)
    kp_p, des_p = sift.detectAndCompute(want, None)
    if des_p is None or len(kp_p) < MIN_KEYPOINTS:
        return Match(False, False, 0, len(kp_p) if kp_p is not None else 0)
    kp_s, des_s = sift.detectAndCompute(have, None)
    if des_s is None or len(kp_s) < 2:
        return Match(True, False, 0, len(kp_p))
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(des_p, des_s, k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < RATIO * n.distance]
    if len(good) < MIN_INLIERS:
        return Match(True, False, len(good), len(kp_p))
    src = np.array([kp_p[m.queryIdx].pt for m in good], dtype=np.float32).reshape(-1, 1, 2)
    dst = np.array([kp_s[m.trainIdx].pt for m in good], dtype=np.float32).reshape(-1, 1, 2)
    homography, mask = cv2.findHomography(src, dst, cv2.RANSAC, 5.0)
    if homography is None or mask is None:
        return Match(True, False, 0, len(kp_p))
    inliers = int(mask.sum())
    h, w = want.shape
    corners = cv2.perspectiveTransform(
        np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32).reshape(-1, 1, 2), homography
    )
    quad = corners.reshape(-1, 2)
    if inliers < MIN_INLIERS or not _plausible(quad, (w, h), have.shape):
        return Match(True, False, inliers, len(kp_p))
    # The same colours where it was placed: the scene there, turned back into the product's frame.
    back = cv2.warpPerspective(have_rgb, np.linalg.inv(homography), (w, h))
    apart = float(np.linalg.norm(_chroma(want_rgb) - _chroma(back)))
    return Match(True, apart <= MAX_CHROMA, inliers, len(kp_p))


def _plausible(quad: np.ndarray, size: tuple[int, int], scene: tuple[int, ...]) -> bool:
    """Where the homography puts the product is a product held in view: a convex quadrilateral of at
    least 0.2 % of the scene, opposite sides of like length (a hand turns it, it does not fold it), its
    proportions within a factor 2 of the product's. Chance matches (letters of one font) give shapes
    that fail this."""
    import cv2

    if not cv2.isContourConvex(quad.astype(np.float32)):
        return False
    if abs(float(cv2.contourArea(quad))) < 0.002 * scene[0] * scene[1]:
        return False
    sides = [float(np.linalg.norm(quad[(i + 1) % 4] - quad[i])) for i in range(4)]
    if min(sides) <= 0:
        return False
    for a, b in ((sides[0], sides[2]), (sides[1], sides[3])):
        if not 0.5 <= a / b <= 2.0:
            return False
    seen = ((sides[0] + sides[2]) / 2) / ((sides[1] + sides[3]) / 2)
    return 0.5 <= seen / (size[0] / size[1]) <= 2.0
