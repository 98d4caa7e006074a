"""Run the loopback fakes in their own process (``python -m castflow.fakes.serve``), for benchmarks:
the fakes' CPU then stays out of the orchestrating process. Prints one JSON line with their URLs and
keys, then serves until stopped. ``GET /_fake/calls`` on each fake returns its call counters."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading

from castflow.fakes import fal, supabase, wavespeed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fal-concurrency", type=int, default=0, help="fal account cap (IN_PROGRESS).")
    parser.add_argument("--wavespeed-concurrency", type=int, default=0, help="WaveSpeed account cap.")
    parser.add_argument("--edit-seconds", type=float, default=0.0, help="Run time of an image edit.")
    parser.add_argument("--tts-seconds", type=float, default=0.0, help="Run time of a TTS request.")
    parser.add_argument(
        "--lipsync-seconds-per-audio-second", type=float, default=0.0, help="Lip-sync time per audio second."
    )
    parser.add_argument("--synthetic", action="store_true", help="Cheap outputs (see the fakes' knobs).")
    args = parser.parse_args(argv)

    fal_fake = fal.FakeFal()
    fal_fake.knobs.concurrency = args.fal_concurrency
    fal_fake.knobs.synthetic = args.synthetic
    fal_fake.knobs.run_seconds = args.tts_seconds
    fal_fake.knobs.run_seconds_by_model = dict.fromkeys(fal.EDIT_MODELS, args.edit_seconds)
    ws_fake = wavespeed.FakeWaveSpeed()
    ws_fake.knobs.concurrency = args.wavespeed_concurrency
    ws_fake.knobs.seconds_per_audio_second = args.lipsync_seconds_per_audio_second
    ws_fake.knobs.synthetic = args.synthetic
    sb_fake = supabase.FakeSupabaseStorage()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.ExitStack() as stack:
        stack.enter_context(fal_fake.running())
        stack.enter_context(ws_fake.running())
        stack.enter_context(sb_fake.running())
        print(
            json.dumps(
                {
                    "fal": {"url": fal_fake.url, "key": fal.VALID_KEY},
                    "wavespeed": {"url": ws_fake.url, "key": wavespeed.VALID_KEY},
                    "supabase": {"url": sb_fake.url, "key": supabase.SERVICE_KEY},
                }
            ),
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    sys.exit(0)


if __name__ == "__main__":
    main()
