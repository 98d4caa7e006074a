"""Script-to-audio alignment benchmark (castflow.align): how far the word starts it finds are from the
truth, and how much CPU it takes.

The targets are eSpeak NG renderings in voices, rates and rooms other than the aligner's reference (en-us
at its own rate), so the truth is exact: that rendering's own word events (local.word_timings). Each is
padded with silence (or the bed) before and after and resampled to a rate other than eSpeak's 22,050 Hz.
Conditions:

- ``f3-slow``: en-us+f3 (female) at 140 wpm, 24 kHz
- ``m3-gb-fast``: en+m3 (British male) at 195 wpm, 44.1 kHz
- ``music-bed``: en-us+m3 at 170 wpm over a chord-and-drum loop 20 dB under the voice, which also plays
  through the second of lead-in and the tail
- ``klatt-noise``: en-us+klatt (another synthesis method) at 150 wpm in pink noise 20 dB under the
  voice, 16 kHz
- ``tempo-pauses``: en+f4, each phrase at its own rate (0.75-1.3 x 170 wpm) with 0.1-0.9 s pauses
  between phrases (the reference pauses only as eSpeak does)
- ``french-accent``: eSpeak's French voice reading the English script (other phonemes, other rhythm)
- ``phone-reverb``: en-us+f2 at 175 wpm in a 0.4 s reverb, band-limited to 300-3400 Hz, at 8 kHz

Errors are |found start - true start| per word. A last case aligns one 127 s audio (48 kHz) for the CPU
and the peak of memory allocated (tracemalloc) at that length. Prints one JSON object.

eSpeak's voices all time phonemes eSpeak's way, so these errors flatter the aligner. With ``--festival``
(where Debian's festival, festvox-kallpc16k and festvox-us-slt-hts are installed; they are no dependency
of castflow) three more conditions use another synthesiser, whose durations come from models of real
speakers, with the truth from its own segment times (a word starts where its first segment does):

- ``festival-slt-hts``: Festival's HTS voice cmu_us_slt_arctic (a statistical model of a woman's voice)
- ``festival-kal-diphone``: Festival's kal diphone voice (a man's recorded diphones)
- ``festival-slt-music``: the HTS voice over the music bed, 20 dB under

These are reported apart (``festival``), not in ``overall``. Festival reads "$20" as its own two words,
whose start it gives at "twenty" where local.word_timings (and so the aligner) gives eSpeak's "dollars":
that word alone is off by about 0.4 s by definition there.

    python bench/align_bench.py              # everything (about a minute)
    python bench/align_bench.py --no-long    # without the two-minute case
    python bench/align_bench.py --festival   # and the Festival conditions
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from castflow import align, media
from castflow.providers import local

SCRIPTS = [
    "Okay, real talk: this serum changed my mornings. I used to spend twenty minutes on my skin, and "
    "now it's two.",
    "Quick tip for busy parents. Our planner keeps every school pickup, every practice and every birthday "
    "in one place, so nothing slips through the cracks. Try it free for thirty days.",
    "Honestly? I didn't believe the reviews. Then I tried the new blender and made a smoothie in ten "
    "seconds flat.",
    "Here is the thing nobody tells you about running shoes: the right pair feels boring. No pain, no "
    "blisters, just miles. These are the most boring shoes I have ever owned, and I love them. Grab yours "
    "for $20 off today, 3x cheaper than the big brands.",
    "Stop scrolling. If your coffee tastes bitter, it's not the beans, it's the grind. This little kit "
    "fixes that.",
    "My grandmother's recipe, my kitchen, and one secret ingredient you can order tonight. Fresh spices, "
    "delivered weekly, from small farms in Kerala and Oaxaca. Cook something real this weekend; your "
    "family will notice, and so will you.",
    "Three things I wish I knew before buying a mattress: firm isn't always better, trials matter, and "
    "the price tag lies.",
    "You've seen the ads. You've heard the hype. Here's what actually happened when I wore these "
    "headphones on a twelve-hour flight with a crying toddler two rows back: silence, sweet silence.",
]


@dataclass(frozen=True)
class Condition:
    voice: str
    wpm: int
    rate: int
    bed: str | None = None  # "music" or "noise", 20 dB under the voice
    tempo: bool = False  # each phrase at its own rate, with pauses between phrases
    phone: bool = False  # reverb, then 300-3400 Hz


CONDITIONS = {
    "f3-slow": Condition("en-us+f3", 140, 24_000),
    "m3-gb-fast": Condition("en+m3", 195, 44_100),
    "music-bed": Condition("en-us+m3", 170, 24_000, bed="music"),
    "klatt-noise": Condition("en-us+klatt", 150, 16_000, bed="noise"),
    "tempo-pauses": Condition("en+f4", 170, 24_000, tempo=True),
    "french-accent": Condition("fr", 160, 24_000),
    "phone-reverb": Condition("en-us+f2", 175, 8_000, phone=True),
}
LEAD_S, TAIL_S = 1.0, 0.6


def resample(x: npt.NDArray[np.float64], src: int, dst: int) -> npt.NDArray[np.float64]:
    """Band-limited resampling by FFT (the whole signal at once: fine for a benchmark). The signal is
    zero-padded so that both transform lengths have only small prime factors: an FFT of a length with a
    large prime factor takes far more time and memory."""
    g = math.gcd(src, dst)
    step_in, step_out = src // g, dst // g
    q = _smooth(math.ceil(len(x) / step_in))
    n, m = step_in * q, step_out * q
    spectrum = np.fft.rfft(x, n)
    out = np.zeros(m // 2 + 1, dtype=complex)
    k = min(len(spectrum), len(out))
    out[:k] = spectrum[:k]
    return np.fft.irfft(out, m)[: round(len(x) * dst / src)] * (m / n)


def _smooth(n: int) -> int:
    """The least number >= n with no prime factor above 5."""
    while True:
        rest = n
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return n
        n += 1


def _bed(kind: str, n: int, rate: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    t = np.arange(n) / rate
    if kind == "noise":  # pink: white noise with a 1/sqrt(f) spectrum
        spectrum = np.fft.rfft(rng.standard_normal(n))
        spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
        return np.fft.irfft(spectrum, n)
    bed = np.zeros(n)
    chords = [(220.0, 277.2, 329.6), (196.0, 246.9, 293.7), (174.6, 220.0, 261.6), (164.8, 207.7, 246.9)]
    bar = 2.0
    for k in range(int(t[-1] / bar) + 1):
        seg = (t >= k * bar) & (t < (k + 1) * bar)
        for f in chords[k % 4]:
            bed[seg] += np.sin(2 * np.pi * f * t[seg]) + 0.3 * np.sin(4 * np.pi * f * t[seg])
    beat = (t % 0.5) / 0.5  # four beats a bar: a kick (decaying 60 Hz) and a hi-hat on the off-beat
    bed += 3.0 * np.exp(-beat * 25) * np.sin(2 * np.pi * 60 * t)
    hat = ((t + 0.25) % 0.5) / 0.5
    bed += 1.5 * np.exp(-hat * 60) * rng.standard_normal(n)
    return bed


def _phone(x: npt.NDArray[np.float64], rate: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """A small room (exponentially decaying noise, RT60 0.4 s, half wet) and a telephone band."""
    ir_n = int(0.4 * rate)
    ir = rng.standard_normal(ir_n) * np.exp(-6.9 * np.arange(ir_n) / ir_n)
    ir[0] = 0.0
    n = len(x) + ir_n
    wet = np.fft.irfft(np.fft.rfft(x, n) * np.fft.rfft(ir, n), n)[: len(x)]
    y = x + 0.5 * wet / np.sqrt(np.sum(ir**2))
    spectrum = np.fft.rfft(y)
    freqs = np.fft.rfftfreq(len(y), 1 / rate)
    spectrum[(freqs < 300) | (freqs > 3400)] = 0
    return np.fft.irfft(spectrum, len(y))


def render(script: str, cond: Condition, seed: int) -> tuple[media.Audio, list[dict[str, object]]]:
    """The target audio and its true word timings (seconds into that audio)."""
    engine = local._espeak()
    rng = np.random.default_rng(seed)
    if cond.tempo:
        phrases = [p for p in re.split(r"(?<=[.,;:?!])\s+", script) if p]
        chunks: list[npt.NDArray[np.int16]] = []
        truth: list[dict[str, object]] = []
        at = LEAD_S
        for phrase in phrases:
            pcm, events = engine.speak_words(phrase, cond.voice, int(cond.wpm * rng.uniform(0.75, 1.3)))
            truth += local.word_timings(phrase, events, pcm, engine.rate, offset_s=at)
            gap = np.zeros(int(engine.rate * rng.uniform(0.1, 0.9)), dtype=np.int16)
            chunks += [pcm, gap]
            at += (len(pcm) + len(gap)) / engine.rate
        pcm = np.concatenate(chunks[:-1])
    else:
        pcm, events = engine.speak_words(script, cond.voice, cond.wpm)
        truth = local.word_timings(script, events, pcm, engine.rate, offset_s=LEAD_S)
    speech = resample(pcm.astype(np.float64) / 32768.0, engine.rate, cond.rate)
    if cond.phone:
        speech = _phone(speech, cond.rate, rng)
    x = np.concatenate([np.zeros(int(LEAD_S * cond.rate)), speech, np.zeros(int(TAIL_S * cond.rate))])
    if cond.bed:
        voice_rms = float(np.sqrt(np.mean(speech**2)))
        bed = _bed(cond.bed, len(x), cond.rate, rng)
        x = x + bed * voice_rms * 10 ** (-20 / 20) / float(np.sqrt(np.mean(bed**2)))
    x *= 0.5 / max(float(np.abs(x).max()), 1e-9)
    return media.Audio(samples=x.astype(np.float32), rate=cond.rate), truth


FESTIVAL = {
    "festival-slt-hts": ("voice_cmu_us_slt_arctic_hts", None),
    "festival-kal-diphone": ("voice_kal_diphone", None),
    "festival-slt-music": ("voice_cmu_us_slt_arctic_hts", "music"),
}
_FESTIVAL_SCHEME = """({voice})
(set! utt (SynthText "{text}"))
(utt.save.wave utt "{wav}" 'riff)
(mapcar (lambda (token)
          (if (item.daughters token)
              (format t "%s\\t%f\\n" (item.name token)
                      (item.feat (car (item.daughters token))
                                 "R:SylStructure.daughter1.daughter1.R:Segment.p.end"))))
        (utt.relation.items utt 'Token))
"""


def render_festival(script: str, name: str, seed: int) -> tuple[media.Audio, list[dict[str, object]]] | None:
    """Festival reading ``script`` (decoded to media.AUDIO_RATE) and the start of each of its tokens; None
    when its tokens are not the script's words one for one."""
    voice, bed = FESTIVAL[name]
    with tempfile.TemporaryDirectory(prefix="castflow-align-bench-") as work:
        wav, scheme = Path(work) / "speech.wav", Path(work) / "say.scm"
        text = script.replace("\\", " ").replace('"', " ")
        scheme.write_text(_FESTIVAL_SCHEME.format(voice=voice, text=text, wav=wav), encoding="utf-8")
        said = subprocess.run(["festival", "-b", str(scheme)], capture_output=True, text=True, check=True)
        speech = media.decode_audio(wav)
    tokens = [line.split("\t") for line in said.stdout.strip().splitlines()]
    words = re.findall(r"[\w'’-]+", script)
    if len(tokens) != len(words):
        return None
    rate = speech.rate
    voiced = speech.samples.astype(np.float64)
    x = np.concatenate([np.zeros(int(LEAD_S * rate)), voiced, np.zeros(int(TAIL_S * rate))])
    if bed:
        noise = _bed(bed, len(x), rate, np.random.default_rng(seed))
        x = x + noise * float(np.sqrt(np.mean(voiced**2))) * 0.1 / float(np.sqrt(np.mean(noise**2)))
    x *= 0.5 / max(float(np.abs(x).max()), 1e-9)
    truth: list[dict[str, object]] = [
        {"word": word, "start": round(float(start) + LEAD_S, 3)}
        for word, (_token, start) in zip(words, tokens, strict=True)
    ]
    return media.Audio(samples=x.astype(np.float32), rate=rate), truth


def start_errors(found: list[dict[str, object]], truth: list[dict[str, object]]) -> npt.NDArray[np.float64]:
    if [w["word"] for w in found] != [w["word"] for w in truth]:
        raise AssertionError("the aligner did not return the script's words in order")
    return np.array([abs(float(f["start"]) - float(t["start"])) for f, t in zip(found, truth, strict=True)])  # type: ignore[arg-type]


def _ms(errors: npt.NDArray[np.float64]) -> dict[str, float]:
    return {
        "median_ms": round(float(np.median(errors)) * 1000, 1),
        "p90_ms": round(float(np.percentile(errors, 90)) * 1000, 1),
        "max_ms": round(float(errors.max()) * 1000, 1),
    }


def long_case() -> dict[str, Any]:
    """All scripts and the first four again (about two minutes of speech, at 48 kHz): the CPU and the
    peak of memory allocated (tracemalloc, in a second run: tracing slows the first) at that length."""
    script = " ".join(SCRIPTS + SCRIPTS[:4])
    audio, truth = render(script, Condition("en-us+f3", 165, 48_000), seed=99)
    align.align_words(script, audio)  # renders and caches the reference: time the alignment proper
    started = time.process_time()
    found = align.align_words(script, audio)
    cpu = time.process_time() - started
    tracemalloc.start()
    align.align_words(script, audio)
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    errors = start_errors(found, truth)
    return {
        "audio_s": round(audio.seconds, 1),
        "rate": audio.rate,
        "words": len(found),
        **_ms(errors),
        "cpu_s": round(cpu, 2),
        "peak_alloc_mb": round(peak / 2**20, 1),
    }


def _run(names: list[str], festival: bool) -> tuple[dict[str, Any], list[dict[str, Any]], float, float]:
    by_condition: dict[str, Any] = {}
    cases: list[dict[str, Any]] = []
    cpu = audio_s = 0.0
    for name in names:
        errs: list[npt.NDArray[np.float64]] = []
        for i, script in enumerate(SCRIPTS):
            made = (
                render_festival(script, name, seed=i)
                if festival
                else render(script, CONDITIONS[name], seed=i)
            )
            if made is None:
                cases.append({"condition": name, "script": i, "skipped": "tokens are not the script's words"})
                continue
            audio, truth = made
            align._reference.cache_clear()  # a first alignment of its script: eSpeak's reading counts
            started = time.process_time()
            found = align.align_words(script, audio)
            spent = time.process_time() - started
            cpu += spent
            audio_s += audio.seconds
            errors = start_errors(found, truth)
            errs.append(errors)
            cases.append(
                {"condition": name, "script": i, "words": len(found), "audio_s": round(audio.seconds, 2),
                 **_ms(errors), "cpu_s": round(spent, 3)}
            )  # fmt: skip
        described = (
            {"voice": FESTIVAL[name][0], "bed": FESTIVAL[name][1]} if festival else vars(CONDITIONS[name])
        )
        by_condition[name] = {**described, **_ms(np.concatenate(errs)), "_errors": np.concatenate(errs)}
    return by_condition, cases, cpu, audio_s


def _summary(by_condition: dict[str, Any]) -> dict[str, Any]:
    everything = np.concatenate([c.pop("_errors") for c in by_condition.values()])
    return {"words": len(everything), **_ms(everything)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-long", action="store_true", help="Skip the two-minute audio case.")
    parser.add_argument(
        "--conditions", nargs="*", default=list(CONDITIONS), choices=list(CONDITIONS), help="Run only these."
    )
    parser.add_argument("--festival", action="store_true", help="Also the Festival conditions.")
    args = parser.parse_args(argv)
    conditions, cases, cpu, audio_s = _run(args.conditions, festival=False)
    report: dict[str, Any] = {
        "model": align.ALIGN_MODEL,
        "scripts": len(SCRIPTS),
        "overall": _summary(conditions),
        "cpu_s_per_audio_s": round(cpu / audio_s, 4),
        "audio_s": round(audio_s, 1),
        "conditions": conditions,
    }
    if args.festival:
        if shutil.which("festival") is None:
            report["festival"] = {"skipped": "festival is not installed"}
        else:
            conditions, festival_cases, cpu, audio_s = _run(list(FESTIVAL), festival=True)
            report["festival"] = {
                "overall": _summary(conditions),
                "cpu_s_per_audio_s": round(cpu / audio_s, 4),
                "conditions": conditions,
            }
            cases += festival_cases
    if not args.no_long:
        report["long_audio"] = long_case()
    report["cases"] = cases
    return report


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
    sys.exit(0)
