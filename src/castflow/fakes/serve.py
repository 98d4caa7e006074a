"""Run the loopback fakes in their own process (``python -m castflow.fakes.serve``), for benchmarks:
the fakes' CPU then stays out of the orchestrating process. Prints one JSON line with their URLs and
keys, then serves until stopped. On each fake ``GET /_fake/calls`` returns its call counters and
``GET``/``POST /_fake/knobs`` reads or sets its knobs; on fal and WaveSpeed ``GET /_fake/jobs`` lists
every job created. Fault rates are probabilities (0 to 1), drawn from generators seeded with ``--seed``."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from pathlib import Path

from castflow.providers.fal import fake as fal
from castflow.providers.loopback import JobLog, set_knobs
from castflow.providers.wavespeed import fake as wavespeed
from castflow.storage.supabase import fake as supabase


def client_env(info: dict[str, dict[str, str]]) -> dict[str, str]:
    """The ``CASTFLOW_*`` variables that point castflow's image edits, speech and lip-sync at the fakes
    this module serves (``info``: the JSON line it prints)."""
    fal, ws = info["fal"], info["wavespeed"]
    return {
        "CASTFLOW_PROVIDERS__IMAGE": "fal",
        "CASTFLOW_PROVIDERS__LIPSYNC": "wavespeed",
        "CASTFLOW_FAL__KEY": fal["key"],
        "CASTFLOW_WAVESPEED__KEY": ws["key"],
        "CASTFLOW_FAL__QUEUE_URL": fal["url"],
        "CASTFLOW_FAL__REST_URL": fal["url"],
        "CASTFLOW_FAL__CDN_URL": fal["url"],
        "CASTFLOW_WAVESPEED__BASE_URL": ws["url"],
    }


def _codes(text: str) -> list[int]:
    return [int(code) for code in text.split(",")]


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
    faults = parser.add_argument_group("faults (fal and WaveSpeed unless named)")
    faults.add_argument("--seed", type=int, default=0, help="Seed of every fake's fault draws.")
    faults.add_argument(
        "--submit-error-rate", type=float, default=0.0, help="Submits answered with an error, no job created."
    )
    faults.add_argument(
        "--fal-submit-error-codes", type=_codes, help="Comma-separated codes (default 429,503: ingress)."
    )
    faults.add_argument(
        "--wavespeed-submit-error-codes", type=_codes, help="Comma-separated codes (default 429)."
    )
    faults.add_argument(
        "--lost-answer-rate", type=float, default=0.0, help="Submits that create the job, then hang up."
    )
    faults.add_argument("--status-error-rate", type=float, default=0.0, help="fal status calls failed.")
    faults.add_argument("--status-error-codes", type=_codes, help="Comma-separated codes (default 500,503).")
    faults.add_argument(
        "--result-error-rate", type=float, default=0.0, help="Result calls failed (WaveSpeed: every poll)."
    )
    faults.add_argument("--result-error-codes", type=_codes, help="Comma-separated codes (default 500,503).")
    faults.add_argument("--fail-job-rate", type=float, default=0.0, help="Jobs created that end failed.")
    faults.add_argument(
        "--latency-spike-rate", type=float, default=0.0, help="API answers delayed by --latency-spike-s."
    )
    faults.add_argument("--latency-spike-s", type=float, default=0.0, help="Length of a latency spike.")
    faults.add_argument(
        "--storage-error-rate", type=float, default=0.0, help="Supabase object calls answered with an error."
    )
    faults.add_argument("--storage-error-codes", type=_codes, help="Comma-separated codes (default 500,503).")
    parser.add_argument(
        "--jobs-file", type=Path, help="Append every job created (one JSON line each) to this file."
    )
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
    shared = {
        "seed": args.seed,
        "submit_error_rate": args.submit_error_rate,
        "lost_answer_rate": args.lost_answer_rate,
        "result_error_rate": args.result_error_rate,
        "fail_job_rate": args.fail_job_rate,
        "latency_spike_rate": args.latency_spike_rate,
        "latency_spike_s": args.latency_spike_s,
    }
    fal_knobs = {**shared, "status_error_rate": args.status_error_rate}
    ws_knobs = dict(shared)
    storage_knobs = {"seed": args.seed, "error_rate": args.storage_error_rate}
    for knobs, name, codes in (
        (fal_knobs, "submit_error_codes", args.fal_submit_error_codes),
        (ws_knobs, "submit_error_codes", args.wavespeed_submit_error_codes),
        (fal_knobs, "status_error_codes", args.status_error_codes),
        (fal_knobs, "result_error_codes", args.result_error_codes),
        (ws_knobs, "result_error_codes", args.result_error_codes),
        (storage_knobs, "error_codes", args.storage_error_codes),
    ):
        if codes is not None:  # unset: each fake's own default
            knobs[name] = codes
    try:  # the same checks as POST /_fake/knobs (rates between 0 and 1, codes given)
        set_knobs(fal_fake.knobs, fal_knobs)
        set_knobs(ws_fake.knobs, ws_knobs)
        set_knobs(sb_fake.knobs, storage_knobs)
    except ValueError as exc:
        parser.error(str(exc))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.ExitStack() as stack:
        if args.jobs_file is not None:
            fal_fake.job_log = ws_fake.job_log = JobLog(args.jobs_file)
            stack.callback(fal_fake.job_log.close)
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
