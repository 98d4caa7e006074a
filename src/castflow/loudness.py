"""Loudness: EBU R128 / ITU-R BS.1770 measurement (libebur128, the reference library, through
``pyebur128``) and normalisation of a finished mix to what the platforms play at.

TikTok, Instagram and YouTube turn every upload to about -14 LUFS integrated; a mix made there keeps its
dynamics as mixed, and a true peak at or under -1 dBTP survives their AAC/Opus re-encode without clipping.
:func:`normalise` sets the gain for the target loudness, then a look-ahead peak limiter (only where
peaks would cross the ceiling) keeps the true peak under it; :func:`measure` is what QC reads back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

TARGET_LUFS = -14.0
CEILING_DBTP = -1.0
LUFS_TOLERANCE = 0.5  # what the check allows around the target

Samples = npt.NDArray[np.float32]  # (channels, frames), float in [-1, 1]


@dataclass(frozen=True)
class Loudness:
    lufs: float  # integrated; -inf for silence
    true_peak_dbtp: float  # the highest channel's, 4x oversampled (libebur128)


def measure(samples: Samples, rate: int) -> Loudness:
    """Integrated loudness and true peak of ``samples`` (channels x frames)."""
    import pyebur128

    channels, frames = samples.shape
    mode = pyebur128.MeasurementMode.MODE_I | pyebur128.MeasurementMode.MODE_TRUE_PEAK
    state = pyebur128.R128State(channels, rate, mode)
    interleaved = np.ascontiguousarray(samples.T.reshape(-1), dtype=np.float64)
    state.add_frames(interleaved, frames)
    lufs = float(pyebur128.get_loudness_global(state))
    peak = max(float(pyebur128.get_true_peak(state, c)) for c in range(channels))
    return Loudness(lufs, 20 * math.log10(peak) if peak > 0 else -math.inf)


def _limit(samples: Samples, rate: int, ceiling: float) -> Samples:
    """A look-ahead limiter: the gain dips (5 ms ahead of a peak, back over 80 ms) wherever a sample
    would pass ``ceiling`` (linear), and is 1 everywhere else."""
    peak = np.abs(samples).max(axis=0)
    need = np.minimum(1.0, ceiling / np.maximum(peak, 1e-9)).astype(np.float64)
    ahead = max(1, int(rate * 0.005))
    # The lowest gain needed within the next ``ahead`` frames, so the dip starts before the peak.
    padded = np.concatenate([need, np.ones(ahead)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, ahead + 1)
    gain = windows.min(axis=1)[: len(need)]
    release = math.exp(-1.0 / (rate * 0.08))
    smooth = gain.copy()
    # A first-order release after each dip (the attack is the look-ahead window itself), walked only
    # where the gain is below 1 or recovering: speech at -14 LUFS dips rarely.
    i, n = 0, len(gain)
    dips = np.flatnonzero(gain < 1.0)
    for start in dips:
        if start < i:
            continue
        level, i = 1.0, int(start)
        while i < n:
            g = gain[i]
            level = g if g < level else g + (level - g) * release
            smooth[i] = level
            if level > 0.9999 and g >= 1.0:
                break
            i += 1
    limited: Samples = (samples * smooth[np.newaxis, :]).astype(np.float32)
    return limited


def normalise(
    samples: Samples, rate: int, *, target: float = TARGET_LUFS, ceiling_dbtp: float = CEILING_DBTP
) -> Samples:
    """``samples`` at ``target`` LUFS integrated (within 0.1 LU) with the true peak at most
    ``ceiling_dbtp``. Silence is returned as it is. Each round sets the gain from the last measure, limits
    the peaks and measures again (libebur128): limiting lowers the loudness a little, which the next
    round's gain gives back, and a true peak still over the ceiling (inter-sample peaks sit above the
    samples) lowers the limiter's threshold; three rounds suffice on speech and music."""
    before = measure(samples, rate)
    if not math.isfinite(before.lufs):
        return samples
    gain_db = target - before.lufs
    threshold = ceiling_dbtp - 0.2
    out = samples
    for _ in range(8):
        gained = (samples * 10 ** (gain_db / 20)).astype(np.float32)
        out = _limit(gained, rate, 10 ** (threshold / 20))
        found = measure(out, rate)
        loud_ok = abs(found.lufs - target) <= 0.1
        peak_ok = found.true_peak_dbtp <= ceiling_dbtp
        if loud_ok and peak_ok:
            break
        if not peak_ok:
            threshold -= found.true_peak_dbtp - ceiling_dbtp + 0.05
        if not loud_ok:
            gain_db += target - found.lufs
    return out


def problems(
    samples: Samples, rate: int, *, target: float = TARGET_LUFS, ceiling_dbtp: float = CEILING_DBTP
) -> list[str]:
    """Why a mix is off the loudness spec (empty when it meets it)."""
    found = measure(samples, rate)
    out = []
    if not math.isfinite(found.lufs) or abs(found.lufs - target) > LUFS_TOLERANCE:
        out.append(f"loudness {found.lufs:.1f} LUFS, needs {target:g} ± {LUFS_TOLERANCE:g}")
    if found.true_peak_dbtp > ceiling_dbtp + 0.05:
        out.append(f"true peak {found.true_peak_dbtp:.2f} dBTP, needs at most {ceiling_dbtp:g}")
    return out
