"""Word timings for audio that came without them (an uploaded voice-over, a TTS that returned no
timestamps), found by aligning the known script to it: forced alignment, no speech recognition.

eSpeak NG reads the script in a neutral voice: the *reference*, whose word times are exact, from
eSpeak's own word events (``local.word_timings``). Both the reference and the target become 10 ms frames
of spectral features, dynamic time warping (DTW) finds the cheapest monotonic match between the two
frame sequences, and each reference word's start and end go through that match into the target. The
result is in the shape ``local.word_timings`` gives for eSpeak's own speech, so captions and lip-sync
treat both alike.

What makes it hold up on real uploads rather than on eSpeak alone:

- Features are MFCCs of a log-mel spectrum plus their deltas, with the loudness normalised per signal and
  the cepstral mean removed, so a louder, deeper or brighter voice still matches. Both signals are
  analysed on the same 10 ms frame grid with the same mel filters in Hz (up to the lower of the two
  Nyquist frequencies), which is what resampling both to one rate would give, without resampling.
- The log spectra of both share one noise floor, the target's own background level, so the reference's
  digital silence looks like the target's room tone, noise or music bed, and detail the target's
  background hides is hidden in the reference too.
- The reference gets 0.3 s of silence at each end and a one-frame pause between words. Pause frames
  (these and eSpeak's own pauses) stretch without limit, cost little to skip, and match anything at a
  capped cost: they absorb the target's leading and trailing silence or music, a speaker's pauses where
  eSpeak made none and breaths, while a speech frame may cover at most three target frames. Speech
  thus cannot be smeared over an intro, and a pause lands between words, not inside the next one.
- DTW runs coarse to fine (frames pooled by 4, recursively, then a narrow band around the coarser
  path), so memory and time grow about linearly with the length: two minutes of 48 kHz audio take
  about 1.2 s of CPU and 50 MB at the peak, most of it the samples and their frames (bench/align_bench.py).

eSpeak NG carries some synthesis state from one utterance to the next (its output for a text differs by
about 10 ms depending on what the process synthesised before, and offers no reset), so the reference
for a script is rendered once and kept (a small LRU cache): the same script and audio always give the
same words within a process; across processes they may differ by a frame or two.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from castflow import media
from castflow.providers import local

ALIGN_MODEL = "dtw-espeak-v1"  # bump when a change moves the timings (it is part of cache keys)

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

_WORD = re.compile(r"[\w'’-]+")  # local.word_timings's words

# The reference: a neutral voice at a usual ad-read pace; silence around it for the target's to match.
_REF_VOICE = "en-us"
_REF_WPM = 165
_PAD_S = 0.3

# Features.
_HOP_S, _WIN_S = 0.01, 0.025
_N_MELS, _N_CEPS = 40, 13
_FMIN, _FMAX = 80.0, 7600.0
_LEVEL_PCT = 95.0  # loudness reference: this percentile of the frames' power
_FLOOR_PCT = 10.0  # the target's background level, per mel band
_MIN_FLOOR = 1e-6  # -60 dB under the loudness reference, for digitally silent targets
_ACTIVE = 3.0  # frames above this many times the floor's power count for the cepstral mean
_SOUNDING = 1e-4  # reference frames above -40 dB of its loudness are speech; others are pauses
_DELTA_W = 1.0

# DTW costs (Euclidean distances between feature frames are about 2-3 for like sounds, 5-8 for unlike).
_PEN_SPEECH = 1.0  # added to every non-diagonal step on a speech frame
_PEN_PAUSE = 0.3  # ... on a pause frame: pauses vary in length far more than sounds do
_SKIP_PAUSE = 0.2  # a pause frame passed over (the target has no pause there) pays this share of its cost
_PAUSE_CAP = 4.0  # a pause frame costs at most this against anything (music, a breath, a cough)
_MAX_STRETCH = 2  # extra target frames one reference speech frame may cover
# Coarse to fine.
_COARSE = 4
_FULL_CELLS = 2_500_000  # below this many cells, plain DTW
_NEIGH, _RADIUS = 2, 12  # the fine band: the coarse path's columns over +-2 coarse rows, +-12 frames
_HOLD = 10  # frames one reference frame may hold a word's start or end back (see _word_bounds)

_CODE_DIAG, _CODE_VERT, _CODE_HORZ, _CODE_START = 0, 1, 2, 3  # 4 + k: a frame covering k + 1 frames


def align_words(script: str, audio: media.Audio) -> list[dict[str, object]]:
    """Every word of ``script`` (as ``local.word_timings`` splits it) with its start and end in seconds
    into ``audio``, rounded to milliseconds: starts never decrease, each end is at or after its start,
    all within the audio. An empty script (no words) gives ``[]``."""
    if not _WORD.search(script):
        return []
    fmax = min(_FMAX, 0.45 * min(local._espeak().rate, audio.rate))
    ref_mel, ref_words = _reference(script, fmax)
    if not ref_words:  # eSpeak said nothing for them (e.g. a lone "-"): spread them over the audio
        return _spread(script, audio.seconds)
    target_mel = _mel_power(audio.samples, audio.rate, fmax)
    floor = np.maximum(np.percentile(target_mel, _FLOOR_PCT, axis=0), _MIN_FLOOR)
    # One all-zero frame at the end gives the features of digital silence, for the inserted pauses.
    ref = _features(np.vstack([ref_mel, np.zeros((1, _N_MELS))]), floor)
    ref, silence = ref[:-1], ref[-1].copy()
    silence[_N_CEPS:] = 0.0  # a pause has no dynamics of its own
    target = _features(target_mel, floor)

    n = len(ref)
    starts = np.clip(np.array([round(_seconds(w["start"]) / _HOP_S) for w in ref_words]), 0, n - 1)
    ends = np.array([round(_seconds(w["end"]) / _HOP_S) for w in ref_words])
    ends = np.clip(np.maximum(ends, starts + 1), 1, n)
    pause = ref_mel.sum(axis=1) <= _SOUNDING
    # A pause frame before each word that follows another without one, so that a pause of the speaker's
    # own has somewhere to go.
    joins = np.unique(starts[1:])
    joins = joins[(joins > 0) & ~pause[joins] & ~pause[joins - 1]]
    ref = np.insert(ref, joins, silence, axis=0)
    pause = np.insert(pause, joins, True)
    starts = starts + np.searchsorted(joins, starts, side="right")
    ends = ends + np.searchsorted(joins, ends, side="left")

    first, last = _warp(ref, target, _Rows.of(pause))
    bounds = [_word_bounds(int(fs), int(fe), first, last, pause) for fs, fe in zip(starts, ends, strict=True)]
    total = audio.seconds
    found: list[dict[str, object]] = []
    start = 0.0
    for n_word, (word, (js, je)) in enumerate(zip(ref_words, bounds, strict=True)):
        start = min(max(js * _HOP_S, start), total)
        following = bounds[n_word + 1][0] * _HOP_S if n_word + 1 < len(bounds) else total
        end = min(max(min(je * _HOP_S, following), start), total)  # words do not overlap
        found.append({"word": str(word["word"]), "start": round(start, 3), "end": round(end, 3)})
    return found


def _seconds(value: object) -> float:
    assert isinstance(value, int | float)  # word_timings gives floats (some of them NumPy's)
    return float(value)


def _spread(script: str, seconds: float) -> list[dict[str, object]]:
    """The words laid end to end over the audio in proportion to their length: for scripts eSpeak says
    nothing for, so that every word still comes back (the contract) without a reference to align."""
    words = _WORD.findall(script)
    size = sum(len(w) for w in words)
    out: list[dict[str, object]] = []
    at = 0
    for word in words:
        start, at = at, at + len(word)
        out.append(
            {"word": word, "start": round(seconds * start / size, 3), "end": round(seconds * at / size, 3)}
        )
    return out


@functools.lru_cache(maxsize=16)
def _reference(script: str, fmax: float) -> tuple[Floats, list[dict[str, object]]]:
    """The reference's mel power frames (with its silent padding) and its word timings on them. Cached:
    eSpeak's output depends slightly on what it synthesised before, and one script's alignments should
    not (nor pay for the synthesis twice)."""
    engine = local._espeak()
    pcm, events = engine.speak_words(script, _REF_VOICE, _REF_WPM)
    pad = np.zeros(round(_PAD_S * engine.rate), dtype=np.int16)
    words = local.word_timings(script, events, pcm, engine.rate, offset_s=len(pad) / engine.rate)
    samples = np.concatenate([pad, pcm, pad]).astype(np.float32) / np.float32(32768.0)
    return _mel_power(samples, engine.rate, fmax), words


def _mel_bank(rate: int, n_fft: int, fmax: float) -> Floats:
    """Triangular mel filters over an ``n_fft`` spectrum at ``rate``: defined in Hz, so signals at
    different sample rates land in the same bands."""

    def mel(hz: Floats) -> Floats:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    edges_mel = np.linspace(mel(np.array(_FMIN)), mel(np.array(fmax)), _N_MELS + 2)
    edges = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)
    freqs = np.arange(n_fft // 2 + 1) * rate / n_fft
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (freqs[None, :] - low) / (centre - low)
    fall = (high - freqs[None, :]) / (high - centre)
    return np.maximum(0.0, np.minimum(rise, fall))


def _mel_power(samples: npt.NDArray[np.float32], rate: int, fmax: float) -> Floats:
    """Mel band power of 25 ms Hann windows every 10 ms (pre-emphasised), divided by the signal's
    loudness (a high percentile of the frames' power), so that levels compare across recordings."""
    win = round(_WIN_S * rate)
    n_fft = 1 << (win - 1).bit_length()
    frames = max(1, math.ceil(len(samples) / (_HOP_S * rate)))
    # A zero before (for the pre-emphasis of the first sample) and a window's worth after.
    padded = np.concatenate(
        [np.zeros(1, np.float32), samples.astype(np.float32, copy=False), np.zeros(win, np.float32)]
    )
    starts = np.round(np.arange(frames) * _HOP_S * rate).astype(np.int64)
    window = np.hanning(win)
    bank = _mel_bank(rate, n_fft, fmax).T
    out = np.empty((frames, _N_MELS))
    offsets = np.arange(win)
    for b in range(0, frames, 512):  # in blocks: the frames of a long audio overlap 2.5 times
        idx = starts[b : b + 512, None] + offsets[None, :] + 1
        chunk = padded[idx].astype(np.float64) - 0.97 * padded[idx - 1]
        out[b : b + 512] = np.abs(np.fft.rfft(chunk * window, n=n_fft, axis=1)) ** 2 @ bank
    level = float(np.percentile(out.sum(axis=1), _LEVEL_PCT))
    return out / max(level, 1e-20)


def _features(mel: Floats, floor: Floats) -> Floats:
    """MFCCs (c0-c12) of ``log(mel + floor)`` less their mean over the frames with sound, scaled to unit
    average variance (one scale for all coefficients: per-coefficient variances would blow up the
    near-constant coefficients of silence), with their deltas."""
    logmel = np.log(mel + floor)
    k = np.arange(_N_MELS)
    dct = np.cos(np.pi / _N_MELS * (k[None, :] + 0.5) * np.arange(_N_CEPS)[:, None])
    ceps = logmel @ dct.T
    active = mel.sum(axis=1) > _ACTIVE * floor.sum()
    basis = ceps[active] if active.sum() >= 10 else ceps
    ceps = (ceps - basis.mean(axis=0)) / max(float(np.sqrt(np.mean(basis.var(axis=0)))), 1e-6)
    padded = np.concatenate([ceps[:1], ceps[:1], ceps, ceps[-1:], ceps[-1:]])
    delta = (padded[3:-1] - padded[1:-3] + 2.0 * (padded[4:] - padded[:-4])) / 10.0
    return np.hstack([ceps, _DELTA_W * delta])


@dataclass(frozen=True)
class _Rows:
    """Per reference frame: the penalty of a non-diagonal step, the share of the cost paid when it is
    passed over, the cap on its cost, and whether it may stretch without limit (a pause)."""

    pen: Floats
    skip: Floats
    cap: Floats
    free: Bools

    @classmethod
    def of(cls, pause: Bools) -> _Rows:
        return cls(
            pen=np.where(pause, _PEN_PAUSE, _PEN_SPEECH),
            skip=np.where(pause, _SKIP_PAUSE, 1.0),
            cap=np.where(pause, _PAUSE_CAP, np.inf),
            free=pause.copy(),
        )

    def pooled(self, k: int) -> _Rows:
        """The rows of frames pooled by ``k``: a pooled frame is free if any of its frames is a pause,
        capped only if all are."""
        share = _pool(self.free[:, None].astype(np.float64), k)[:, 0]
        return _Rows(
            pen=_pool(self.pen[:, None], k)[:, 0],
            skip=_pool(self.skip[:, None], k)[:, 0],
            cap=np.where(share >= 1.0, _PAUSE_CAP, np.inf),
            free=share > 0.0,
        )

    def all_free(self) -> _Rows:
        return _Rows(self.pen, self.skip, self.cap, np.ones_like(self.free))


def _pool(f: Floats, k: int) -> Floats:
    """Means of ``k`` consecutive rows (the last row repeated to fill the last group)."""
    n = math.ceil(len(f) / k)
    padded = np.concatenate([f, np.repeat(f[-1:], n * k - len(f), axis=0)])
    pooled: Floats = padded.reshape(n, k, f.shape[1]).mean(axis=1)
    return pooled


def _warp(x: Floats, y: Floats, rows: _Rows) -> tuple[Ints, Ints]:
    """The DTW path of ``x`` (reference) against ``y`` (target), from the first frames of both to the
    last, as the first and last target frame of each reference frame. Large problems are solved coarse
    first (frames pooled by 4, recursively) and then only in a band around the coarse path."""
    n, m = len(x), len(y)
    if n * m <= _FULL_CELLS or min(n, m) < 4 * _COARSE:
        lo, hi = np.zeros(n, dtype=np.int64), np.full(n, m, dtype=np.int64)
    else:
        cfirst, clast = _warp(_pool(x, _COARSE), _pool(y, _COARSE), rows.pooled(_COARSE))
        coarse = np.arange(n) // _COARSE
        below = cfirst[np.maximum(coarse - _NEIGH, 0)] * _COARSE - _RADIUS
        above = (clast[np.minimum(coarse + _NEIGH, len(cfirst) - 1)] + 1) * _COARSE + _RADIUS
        lo, hi = np.clip(below, 0, m - 1), np.clip(above, 1, m)
        lo[0], hi[-1] = 0, m
    path = _dtw(x, y, lo, hi, rows)
    if path is None:  # the band left no way through for speech's limited stretch: let every frame stretch
        path = _dtw(x, y, lo, hi, rows.all_free())
    assert path is not None  # with every frame free, a monotonic band always has a way through
    return path


def _dtw(x: Floats, y: Floats, lo: Ints, hi: Ints, rows: _Rows) -> tuple[Ints, Ints] | None:
    """DTW of all of ``x`` against all of ``y`` within the band ``lo[i] <= j < hi[i]`` (non-decreasing).

    Row by row, each depending only on the previous one, vectorised over the row. The steps into (i, j):
    diagonal from (i-1, j-1) for d(i, j); vertical from (i-1, j) for skip[i] * d(i, j) + pen[i] (the
    reference frame is passed over); on a speech row, from (i-1, j-1-k) for the k+1 frames' costs plus
    k * pen[i] (k <= _MAX_STRETCH); on a free (pause) row, from (i, j-1) for d(i, j) + pen[i], any number
    of times: a running minimum over cumulative sums, D = S + min.accumulate(A - S). d is the Euclidean
    distance, capped per row. Only a uint8 step code per band cell is kept (about 60 bytes a frame).
    Returns None when the last cell cannot be reached."""
    n = len(x)
    offsets = np.concatenate([[0], np.cumsum(hi - lo)])
    codes = np.empty(int(offsets[-1]), dtype=np.uint8)
    ysq = np.einsum("ij,ij->i", y, y)
    stretch = _MAX_STRETCH
    prev = np.empty(0)
    plo = phi = 0
    for i in range(n):
        a, b = int(lo[i]), int(hi[i])
        w = b - a
        pen = float(rows.pen[i])
        d2 = ysq[a:b] - 2.0 * (y[a:b] @ x[i]) + float(x[i] @ x[i])
        cost = np.minimum(np.sqrt(np.maximum(d2, 0.0)), rows.cap[i])
        code = np.zeros(w, dtype=np.uint8)
        if i == 0:  # the path starts at (0, 0) and may only run along the row from there
            cur = np.cumsum(cost + pen) - pen
            code[:] = _CODE_HORZ
            code[0] = _CODE_START
            if not rows.free[0]:
                cur[stretch + 1 :] = np.inf
        else:
            # The previous row's D at columns a-1-stretch .. b-1, infinite outside its band.
            p = np.full(w + 1 + stretch, np.inf)
            s, e = max(a - 1 - stretch, plo), min(b, phi)
            if e > s:
                p[s - (a - 1 - stretch) : e - (a - 1 - stretch)] = prev[s - plo : e - plo]
            best = p[stretch : stretch + w] + cost
            vert = p[1 + stretch :] + float(rows.skip[i]) * cost + pen
            better = vert < best
            best = np.where(better, vert, best)
            code[better] = _CODE_VERT
            if rows.free[i]:
                sums = np.cumsum(cost + pen)
                rel = best - sums
                run = np.minimum.accumulate(rel)
                code[rel > run] = _CODE_HORZ
                cur = sums + run
            else:
                shifted = np.concatenate([np.full(stretch, np.inf), cost])
                covered = cost
                for k in range(1, stretch + 1):
                    covered = covered + shifted[stretch - k : stretch - k + w] + pen
                    cand = p[stretch - k : stretch - k + w] + covered
                    better = cand < best
                    best = np.where(better, cand, best)
                    code[better] = _CODE_START + k
                cur = best
        codes[offsets[i] : offsets[i + 1]] = code
        prev, plo, phi = cur, a, b
    if not np.isfinite(prev[-1]):
        return None
    first = np.zeros(n, dtype=np.int64)
    last = np.zeros(n, dtype=np.int64)
    i, j = n - 1, phi - 1
    last[i] = j
    while True:
        first[i] = j
        step = int(codes[offsets[i] + j - lo[i]])
        if step == _CODE_START:
            break
        if step == _CODE_HORZ:
            j -= 1
            continue
        if step > _CODE_START:  # this frame covered the k frames before j too
            j -= step - _CODE_START
            first[i] = j
        i -= 1
        if step != _CODE_VERT:
            j -= 1
        last[i] = j
    return first, last


def _word_bounds(fs: int, fe: int, first: Ints, last: Ints, pause: Bools) -> tuple[int, int]:
    """A word's first and end (exclusive) target frames, from its reference frames ``fs`` to ``fe``.

    The start is where the word's first sounding frame lands, less the silence before that sound in the
    reference (a stop's closure), so the closure cannot drag the start into a pause before it. When one
    reference frame held many target frames, the word's start is taken at most ``_HOLD`` frames before
    the frame's last one (and its end at most ``_HOLD`` after the first): a sound lasting that long is
    more likely something else (a noisy intro matched to a breathy onset) than the word."""
    sounding = np.flatnonzero(~pause[fs:fe])
    k = fs + int(sounding[0]) if len(sounding) else fs
    ke = fs + int(sounding[-1]) if len(sounding) else fe - 1
    start = max(int(first[fs]), max(int(first[k]), int(last[k]) - _HOLD) - (k - fs))
    end = min(int(last[fe - 1]) + 1, min(int(last[ke]), int(first[ke]) + _HOLD) + 1 + (fe - 1 - ke))
    return start, end
