"""Contract test: the official ``fal-client`` SDK drives the loopback fal fake, which shows the fake speaks
fal's real queue and CDN protocol (fal.md section 5: hosts are module globals, patched for the test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from castflow import media
from castflow.providers.fal.fake import VALID_KEY, FakeFal


@pytest.fixture
def sdk(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[object, FakeFal]]:
    import fal_client
    import fal_client.client as fc

    with FakeFal().running() as fake:
        monkeypatch.setattr(fc, "QUEUE_URL_FORMAT", fake.url + "/")
        monkeypatch.setattr(fc, "RUN_URL_FORMAT", fake.url + "/")
        monkeypatch.setattr(fc, "REST_URL", fake.url)
        monkeypatch.setattr(fc, "CDN_URL", fake.url)
        yield fal_client.SyncClient(key=VALID_KEY), fake


def test_fal_client_uploads_submits_polls_and_fetches(sdk: tuple[object, FakeFal], tmp_path: Path) -> None:
    client, fake = sdk
    portrait = tmp_path / "face.png"
    Image.new("RGB", (96, 128), (200, 150, 120)).save(portrait)
    image_url = client.upload_file(portrait)  # type: ignore[attr-defined]
    assert image_url.startswith(fake.url)
    handle = client.submit(  # type: ignore[attr-defined]
        "fal-ai/nano-banana/edit",
        {"prompt": "on a beach", "image_urls": [image_url], "aspect_ratio": "9:16", "output_format": "png"},
    )
    result = handle.get()
    out = tmp_path / "out.png"
    out.write_bytes(httpx.get(result["images"][0]["url"], timeout=30).content)
    with Image.open(out) as img:
        assert img.size[1] > img.size[0]  # 9:16 portrait
    assert fake.calls["submit"] == 1
    assert fake.calls["status"] >= 1

    speech = client.subscribe(  # type: ignore[attr-defined]
        "fal-ai/elevenlabs/tts/multilingual-v2", {"text": "Hello from the SDK.", "voice": "Rachel"}
    )
    wav = tmp_path / "speech.wav"
    wav.write_bytes(httpx.get(speech["audio"]["url"], timeout=30).content)
    assert media.decode_audio(wav).seconds > 0.5


def test_fal_client_sees_validation_errors_and_cancels(sdk: tuple[object, FakeFal]) -> None:
    import fal_client

    client, fake = sdk
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        client.submit("fal-ai/nano-banana/edit", {"prompt": "no image"}).get()  # type: ignore[attr-defined]
    assert err.value.status_code == 422
    fake.knobs.queue_seconds = 30
    handle = client.submit(  # type: ignore[attr-defined]
        "fal-ai/elevenlabs/tts/multilingual-v2", {"text": "Never mind.", "voice": "Rachel"}
    )
    assert type(handle.status()).__name__ == "Queued"
    handle.cancel()
    assert fake.jobs[handle.request_id].cancelled
