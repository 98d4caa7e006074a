"""Supabase Storage backend against the loopback fake (real HTTP), and the fake against the official SDKs."""

from __future__ import annotations

import logging
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from storage3 import SyncStorageClient
from storage3.exceptions import StorageApiError

from castflow.providers.base import PermanentError, TransientError
from castflow.providers.http import RetryPolicy
from castflow.settings import Settings, StorageSettings
from castflow.storage import build_storage
from castflow.storage.local import InvalidKey, LocalStorage
from castflow.storage.supabase.backend import BucketNotFound, ObjectNotFound, SupabaseStorage
from castflow.storage.supabase.fake import SERVICE_KEY, Bucket, FakeSupabaseStorage, default_buckets

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05, total_seconds=10)
KIB = 1024
MIB = 1024 * 1024


@pytest.fixture
def fake() -> Iterator[FakeSupabaseStorage]:
    with FakeSupabaseStorage().running() as server:
        yield server


def make(fake: FakeSupabaseStorage, cache: Path, **overrides: Any) -> SupabaseStorage:
    return SupabaseStorage(fake.settings(**overrides), cache, policy=FAST)


@pytest.fixture
def storage(fake: FakeSupabaseStorage, tmp_path: Path) -> Iterator[SupabaseStorage]:
    with make(fake, tmp_path / "cache") as s:
        yield s


def random_file(path: Path, size: int) -> Path:
    with open(path, "wb") as out:
        left = size
        while left:
            n = min(left, MIB)
            out.write(os.urandom(n))
            left -= n
    return path


def chain_text(exc: BaseException | None) -> str:
    """str and repr of an exception and everything it was raised from."""
    parts = []
    while exc is not None:
        parts += [str(exc), repr(exc)]
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


# ---- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "content_type", "bucket"),
    [
        ("audio/line-1.wav", "audio/wav", "ugc-audio"),
        ("videos/c1/row-1.mp4", "video/mp4", "ugc-video"),
        ("variants/leo/1.png", "image/png", "ugc-images"),
        ("captions/row-1.srt", "application/x-subrip", "ugc-files"),
    ],
)
def test_round_trip_lands_in_the_bucket_of_its_media_type(
    fake: FakeSupabaseStorage,
    storage: SupabaseStorage,
    tmp_path: Path,
    key: str,
    content_type: str,
    bucket: str,
) -> None:
    source = random_file(tmp_path / "source", 50 * KIB)

    url = storage.put_file(key, source, content_type)

    stored = fake.object(bucket, key)
    assert stored is not None
    assert stored.mimetype == content_type
    assert stored.cache_control == "max-age=3600"
    assert fake.read(bucket, key) == source.read_bytes()
    assert fake.requests[0].headers.get("x-upsert") == "true"
    assert storage.exists(key)
    assert not storage.exists(key + ".missing")
    assert httpx.get(url).content == source.read_bytes()
    assert storage.fetch(key, tmp_path / "copy").read_bytes() == source.read_bytes()
    downloads = fake.calls["download"]
    assert storage.local_path(key).read_bytes() == source.read_bytes()
    assert fake.calls["download"] == downloads  # put_file seeded the cache


def test_local_path_downloads_once_into_the_cache(fake: FakeSupabaseStorage, tmp_path: Path) -> None:
    source = random_file(tmp_path / "a.wav", 10 * KIB)
    with make(fake, tmp_path / "writer-cache") as writer:
        writer.put_file("a/a.wav", source, "audio/wav")
    with make(fake, tmp_path / "reader-cache") as reader:
        first = reader.local_path("a/a.wav")
        second = reader.local_path("a/a.wav")
    assert first == second
    assert first.is_relative_to(tmp_path / "reader-cache")
    assert first.read_bytes() == source.read_bytes()
    assert fake.calls["download"] == 1
    assert [p.name for p in first.parent.iterdir()] == ["a.wav"]  # no temp files left behind


def test_upload_overwrites_an_existing_key(
    fake: FakeSupabaseStorage, storage: SupabaseStorage, tmp_path: Path
) -> None:
    storage.put_file("img/x.png", random_file(tmp_path / "one", 1000), "image/png")
    two = random_file(tmp_path / "two", 2000)
    storage.put_file("img/x.png", two, "image/png")
    assert fake.read("ugc-images", "img/x.png") == two.read_bytes()
    assert storage.local_path("img/x.png").read_bytes() == two.read_bytes()
    assert fake.calls["upload"] == 2


@pytest.mark.parametrize("mode", ["public", "signed"])
def test_url_modes_serve_the_right_bytes_without_credentials(tmp_path: Path, mode: str) -> None:
    with FakeSupabaseStorage(default_buckets(public=mode == "public")).running() as fake:
        with make(fake, tmp_path / "cache", url_mode=mode) as storage:
            one = storage.put_file("a/one.wav", random_file(tmp_path / "1", 3000), "audio/wav")
            two = storage.put_file("a/two.wav", random_file(tmp_path / "2", 3000), "audio/wav")
        assert ("/object/public/" in one) == (mode == "public")
        assert ("token=" in one) == (mode == "signed")
        resp = httpx.get(one)
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "audio/wav"
        assert resp.content == (tmp_path / "1").read_bytes()
        assert httpx.get(two).content == (tmp_path / "2").read_bytes()
        assert fake.calls["sign"] == (2 if mode == "signed" else 0)


def test_public_url_of_a_private_bucket_is_refused(fake: FakeSupabaseStorage, tmp_path: Path) -> None:
    with make(fake, tmp_path / "cache", url_mode="public") as storage:
        url = storage.put_file("a/x.wav", random_file(tmp_path / "x", 100), "audio/wav")
        assert storage.check() == [
            f"bucket {name!r} is private but url_mode is 'public': its URLs will not work"
            for name in ("ugc-audio", "ugc-video", "ugc-images", "ugc-files")
        ]
    body = httpx.get(url).json()
    assert body["statusCode"] == "400"
    assert body["message"] == "Bucket is not public"


# ---- TUS -----------------------------------------------------------------------------------------


def test_small_files_use_the_rest_upload_and_large_ones_tus(
    fake: FakeSupabaseStorage, tmp_path: Path
) -> None:
    with make(fake, tmp_path / "cache", tus_threshold_bytes=100 * KIB, tus_chunk_bytes=256 * KIB) as storage:
        storage.put_file("v/small.mp4", random_file(tmp_path / "small", 100 * KIB), "video/mp4")
        assert (fake.calls["upload"], fake.calls["tus_patch"]) == (1, 0)
        big = random_file(tmp_path / "big", 1000 * KIB)
        storage.put_file("v/big.mp4", big, "video/mp4")
    assert fake.calls["upload"] == 1
    assert fake.calls["tus_create"] == 1
    assert fake.calls["tus_patch"] == 4  # 1000 KiB in 256 KiB chunks
    stored = fake.object("ugc-video", "v/big.mp4")
    assert stored is not None
    assert stored.mimetype == "video/mp4"
    assert fake.read("ugc-video", "v/big.mp4") == big.read_bytes()
    create = next(r for r in fake.requests if r.path.endswith("/upload/resumable"))
    assert create.headers["Tus-Resumable"] == "1.0.0"
    assert create.headers["x-upsert"] == "true"
    assert create.headers["Upload-Length"] == str(1000 * KIB)


def test_tus_overwrites_an_existing_key(fake: FakeSupabaseStorage, tmp_path: Path) -> None:
    with make(fake, tmp_path / "cache", tus_threshold_bytes=0, tus_chunk_bytes=256 * KIB) as storage:
        storage.put_file("v/x.mp4", random_file(tmp_path / "1", 300 * KIB), "video/mp4")
        second = random_file(tmp_path / "2", 300 * KIB)
        storage.put_file("v/x.mp4", second, "video/mp4")
    assert fake.read("ugc-video", "v/x.mp4") == second.read_bytes()


@pytest.mark.parametrize("fault", ["dropped connection", "raw 502", "shaped 503"])
def test_tus_resumes_from_the_server_offset_after_a_broken_patch(
    fake: FakeSupabaseStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    source = random_file(tmp_path / "big", 1000 * KIB)
    with make(fake, tmp_path / "cache", tus_threshold_bytes=0, tus_chunk_bytes=256 * KIB) as storage:
        original = storage._tus_patch
        patches = 0

        def patch_then_break(*args: Any) -> int:
            nonlocal patches
            patches += 1
            if patches == 2:  # break the second chunk
                if fault == "dropped connection":
                    fake.drop_connection(after_bytes=100 * KIB + 7)
                else:
                    fake.fail(502 if fault == "raw 502" else 503, raw=fault == "raw 502", route="tus_patch")
            return original(*args)

        monkeypatch.setattr(storage, "_tus_patch", patch_then_break)
        storage.put_file("v/big.mp4", source, "video/mp4")
    assert fake.read("ugc-video", "v/big.mp4") == source.read_bytes()
    assert fake.calls["tus_head"] == 1
    assert fake.calls["tus_create"] == 1
    offsets = [int(r.headers["Upload-Offset"]) for r in fake.requests if r.method == "PATCH"]
    chunk = 256 * KIB
    if fault == "dropped connection":  # the server kept the bytes it got: resume from there
        assert offsets == [
            0,
            chunk,
            chunk + 100 * KIB + 7,
            2 * chunk + 100 * KIB + 7,
            3 * chunk + 100 * KIB + 7,
        ]
    else:
        assert offsets == [0, chunk, chunk, 2 * chunk, 3 * chunk]


def test_tus_gives_up_after_the_retry_budget(fake: FakeSupabaseStorage, tmp_path: Path) -> None:
    fake.fail(503, times=10, route="tus_patch")
    with (
        make(fake, tmp_path / "cache", tus_threshold_bytes=0, tus_chunk_bytes=256 * KIB) as storage,
        pytest.raises(TransientError, match="TUS PATCH at offset 0 failed 3 times"),
    ):
        storage.put_file("v/x.mp4", random_file(tmp_path / "x", 300 * KIB), "video/mp4")
    assert fake.object("ugc-video", "v/x.mp4") is None


def test_large_upload_and_download_stream_without_holding_the_file(
    fake: FakeSupabaseStorage, tmp_path: Path
) -> None:
    size = 60 * MIB
    source = random_file(tmp_path / "big.mp4", size)
    peaks = {}
    for path, threshold in (("rest", size), ("tus", 6 * MIB)):
        with make(fake, tmp_path / f"cache-{path}", tus_threshold_bytes=threshold) as storage:
            tracemalloc.start()
            try:
                storage.put_file(f"v/{path}.mp4", source, "video/mp4")
                _, peaks[path] = tracemalloc.get_traced_memory()
                tracemalloc.reset_peak()
                storage.fetch(f"v/{path}.mp4", tmp_path / f"{path}-copy.mp4")
                _, peaks[f"{path} fetch"] = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert fake.calls["upload"] == 1
    assert fake.calls["tus_patch"] == 10
    assert (tmp_path / "tus-copy.mp4").stat().st_size == size
    assert all(peak < 20 * MIB for peak in peaks.values()), peaks


# ---- retries and errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "raw"),
    [(503, False), (503, True), (429, False), (500, False), (502, True)],
    ids=["503-in-body", "503-from-proxy", "429-in-body", "500", "502-from-proxy"],
)
def test_transient_answers_are_retried_then_succeed(
    fake: FakeSupabaseStorage, storage: SupabaseStorage, tmp_path: Path, status: int, raw: bool
) -> None:
    fake.fail(status, times=2, route="upload", raw=raw, retry_after=0 if status == 429 else None)
    storage.put_file("a/x.wav", random_file(tmp_path / "x", 1000), "audio/wav")
    assert fake.calls["upload"] == 3
    assert fake.object("ugc-audio", "a/x.wav") is not None


def test_tus_create_conflict_is_retried(fake: FakeSupabaseStorage, tmp_path: Path) -> None:
    fake.fail(409, route="tus_create", error="Duplicate", message="upload in progress")
    with make(fake, tmp_path / "cache", tus_threshold_bytes=0) as storage:
        storage.put_file("v/x.mp4", random_file(tmp_path / "x", 1000), "video/mp4")
    assert fake.calls["tus_create"] == 2
    assert fake.read("ugc-video", "v/x.mp4") == (tmp_path / "x").read_bytes()


def test_slow_server_times_out_is_retried_then_transient(fake: FakeSupabaseStorage, tmp_path: Path) -> None:
    fake.latency = 0.3
    with make(fake, tmp_path / "cache", timeout_s=0.1) as storage:
        with pytest.raises(TransientError, match="ReadTimeout after retries") as info:
            storage.exists("a/x.wav")
        fake.latency = 0
        assert not storage.exists("a/x.wav")  # the same client works once the server is quick again
    assert fake.calls["info"] == FAST.attempts + 1
    assert SERVICE_KEY not in chain_text(info.value)


def test_persistent_503_becomes_a_transient_error(
    fake: FakeSupabaseStorage, storage: SupabaseStorage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake.fail(503, times=10, route="upload")
    with caplog.at_level(logging.DEBUG), pytest.raises(TransientError, match="503") as info:
        storage.put_file("a/x.wav", random_file(tmp_path / "x", 1000), "audio/wav")
    assert fake.calls["upload"] == FAST.attempts
    assert info.value.provider == "supabase"
    assert SERVICE_KEY not in chain_text(info.value)
    assert caplog.records  # the retries were logged ...
    assert SERVICE_KEY not in caplog.text  # ... without the key


def test_missing_object_is_a_permanent_not_found(storage: SupabaseStorage, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound, match="404 not_found: Object not found") as info:
        storage.fetch("a/nothing.wav", tmp_path / "out.wav")
    assert isinstance(info.value, PermanentError)
    assert SERVICE_KEY not in str(info.value)
    assert not (tmp_path / "out.wav").exists()
    with pytest.raises(ObjectNotFound):
        storage.url("a/nothing.wav")  # signing needs the object


def test_refused_key_is_a_permanent_error_that_does_not_echo_the_key(
    fake: FakeSupabaseStorage, tmp_path: Path
) -> None:
    wrong = "wrong-service-role-key-abcdef"
    with SupabaseStorage(fake.settings(service_role_key=wrong), tmp_path / "cache", policy=FAST) as storage:
        with pytest.raises(PermanentError, match="403 Unauthorized: Invalid Compact JWS") as info:
            storage.put_file("a/x.wav", random_file(tmp_path / "x", 100), "audio/wav")
        assert storage.check() == [
            f"Supabase Storage at {storage.host} refused the service-role key "
            "(403 Unauthorized: Invalid Compact JWS)"
        ]
    assert not isinstance(info.value, TransientError)
    assert "access denied" in str(info.value)
    assert wrong not in chain_text(info.value)
    assert wrong not in repr(storage)
    assert fake.calls["upload"] == 1  # not retried


def test_server_403_on_one_route_is_permanent(
    fake: FakeSupabaseStorage, storage: SupabaseStorage, tmp_path: Path
) -> None:
    fake.fail(403, route="upload", error="Unauthorized", message="new row violates row-level security policy")
    with pytest.raises(PermanentError, match="row-level security") as info:
        storage.put_file("a/x.wav", random_file(tmp_path / "x", 100), "audio/wav")
    assert SERVICE_KEY not in str(info.value)


def test_missing_bucket_is_named(tmp_path: Path) -> None:
    buckets = [b for b in default_buckets() if b.id != "ugc-video"]
    with FakeSupabaseStorage(buckets).running() as fake, make(fake, tmp_path / "cache") as storage:
        with pytest.raises(BucketNotFound, match=r"bucket 'ugc-video' does not exist .* 'v/x\.mp4'"):
            storage.put_file("v/x.mp4", random_file(tmp_path / "x", 100), "video/mp4")
        with pytest.raises(BucketNotFound, match="ugc-video"):
            storage.exists("v/x.mp4")
        assert storage.check() == [f"bucket 'ugc-video' does not exist on {storage.host}"]


def test_check_is_empty_when_all_is_well_and_reports_an_unreachable_host(
    storage: SupabaseStorage, tmp_path: Path
) -> None:
    assert storage.check() == []
    with FakeSupabaseStorage().running() as gone:
        settings = gone.settings()
    with SupabaseStorage(settings, tmp_path / "c", policy=FAST) as unreachable:
        assert unreachable.check() == [f"Supabase Storage at {unreachable.host} is unreachable: ConnectError"]
        with pytest.raises(TransientError, match="ConnectError after retries"):
            unreachable.exists("a/x.wav")


@pytest.mark.parametrize("key", ["", "/abs.wav", "a/../b.wav", "a/./b.wav", "a//b.wav"])
def test_invalid_keys_are_refused_before_any_request(
    fake: FakeSupabaseStorage, storage: SupabaseStorage, tmp_path: Path, key: str
) -> None:
    with pytest.raises(InvalidKey):
        storage.put_file(key, random_file(tmp_path / "x", 10), "audio/wav")
    with pytest.raises(InvalidKey):
        storage.local_path(key)
    assert not fake.calls


def test_build_storage_picks_the_backend(fake: FakeSupabaseStorage, tmp_path: Path) -> None:
    local = build_storage(Settings(_env_file=None, data_dir=tmp_path / "d1"))
    assert isinstance(local, LocalStorage)
    remote = build_storage(
        Settings(
            _env_file=None,
            data_dir=tmp_path / "d2",
            storage=StorageSettings(backend="supabase", supabase=fake.settings()),
        )
    )
    assert isinstance(remote, SupabaseStorage)
    assert remote.cache_dir.is_relative_to((tmp_path / "d2" / "cache").resolve())
    remote.put_file("a/x.wav", random_file(tmp_path / "x", 10), "audio/wav")
    assert remote.exists("a/x.wav")


# ---- the fake against the official clients (contract) ---------------------------------------------


def test_storage3_sdk_speaks_to_the_fake(fake: FakeSupabaseStorage, tmp_path: Path) -> None:
    auth = {"apikey": SERVICE_KEY, "Authorization": f"Bearer {SERVICE_KEY}"}
    with httpx.Client() as http:
        sdk = SyncStorageClient(f"{fake.url}/storage/v1/", auth, http_client=http)
        assert sdk.create_bucket("media", options={"public": True}) == {"name": "media"}
        assert sdk.get_bucket("media").public is True
        assert "media" in {b.id for b in sdk.list_buckets()}
        bucket = sdk.from_("media")
        source = random_file(tmp_path / "clip.mp4", 20 * KIB)
        done = bucket.upload("c1/clip.mp4", source, {"content-type": "video/mp4"})
        assert done.full_path == "media/c1/clip.mp4"
        bucket.upload("c1/sub/readme.txt", b"hello", {"content-type": "text/plain"})
        with open(source, "rb") as fh:
            bucket.upload("top.mp4", fh, {"content-type": "video/mp4"})
        assert bucket.download("c1/clip.mp4") == source.read_bytes()
        assert bucket.info("c1/clip.mp4")["content_type"] == "video/mp4"
        assert bucket.exists("c1/clip.mp4")
        assert not bucket.exists("c1/none.mp4")

        signed = bucket.create_signed_url("c1/clip.mp4", 60)["signedURL"]
        assert signed is not None
        assert httpx.get(signed).content == source.read_bytes()
        public = bucket.get_public_url("c1/clip.mp4")
        assert public == f"{fake.url}/storage/v1/object/public/media/c1/clip.mp4"
        assert httpx.get(public).content == source.read_bytes()

        listing = bucket.list("c1")
        assert [(e["name"], e["id"] is None) for e in listing] == [("clip.mp4", False), ("sub", True)]
        assert listing[0]["metadata"]["mimetype"] == "video/mp4"
        assert listing[0]["metadata"]["size"] == 20 * KIB
        assert [e["name"] for e in bucket.list()] == ["c1", "top.mp4"]
        assert [e["name"] for e in bucket.list("c1", {"limit": 1, "offset": 1})] == ["sub"]

        with pytest.raises(StorageApiError) as dup:
            bucket.upload("c1/clip.mp4", b"again", {"content-type": "video/mp4"})
        assert (dup.value.status, dup.value.code) == ("409", "Duplicate")
        bucket.upload("c1/clip.mp4", b"again", {"content-type": "video/mp4", "upsert": "true"})
        bucket.update("c1/clip.mp4", b"third", {"content-type": "video/mp4"})
        assert bucket.download("c1/clip.mp4") == b"third"

        removed = bucket.remove(["c1/clip.mp4", "c1/never.mp4"])
        assert [r["name"] for r in removed] == ["c1/clip.mp4"]
        with pytest.raises(StorageApiError) as missing:
            bucket.download("c1/clip.mp4")
        assert (missing.value.status, missing.value.code, missing.value.message) == (
            "404",
            "not_found",
            "Object not found",
        )
        with pytest.raises(StorageApiError) as again:
            sdk.create_bucket("media")
        assert again.value.status == "409"
        with pytest.raises(StorageApiError) as no_bucket:
            sdk.from_("nope").upload("x.txt", b"x", {"content-type": "text/plain"})
        assert (no_bucket.value.status, no_bucket.value.message) == ("404", "Bucket not found")

        intruder = SyncStorageClient(
            f"{fake.url}/storage/v1/", {"apikey": "x", "Authorization": "Bearer x"}, http_client=http
        )
        with pytest.raises(StorageApiError) as denied:
            intruder.list_buckets()
        assert (denied.value.status, denied.value.code) == ("403", "Unauthorized")
    raw = httpx.post(f"{fake.url}/storage/v1/object/copy", headers=auth, json={})
    assert (raw.status_code, raw.json()["statusCode"]) == (400, "400")
    assert raw.json()["message"] == "route not faked: POST /storage/v1/object/copy"
    sent = fake.requests[0].headers
    assert sent["apikey"] == SERVICE_KEY
    assert sent["X-Client-Info"].startswith("supabase-py/storage3")


def test_tuspy_uploads_through_the_fake(tmp_path: Path) -> None:
    from tusclient import client as tus

    with FakeSupabaseStorage([Bucket("media", file_size_limit=None)]).running() as fake:
        source = random_file(tmp_path / "clip.mp4", 700 * KIB)
        headers = {"apikey": SERVICE_KEY, "Authorization": f"Bearer {SERVICE_KEY}", "x-upsert": "true"}
        uploader = tus.TusClient(f"{fake.url}/storage/v1/upload/resumable", headers=headers).uploader(
            file_path=str(source),
            chunk_size=256 * KIB,
            metadata={
                "bucketName": "media",
                "objectName": "c1/clip.mp4",
                "contentType": "video/mp4",
                "cacheControl": "3600",
            },
        )
        uploader.upload()
        assert fake.read("media", "c1/clip.mp4") == source.read_bytes()
        stored = fake.object("media", "c1/clip.mp4")
        assert stored is not None
        assert (stored.mimetype, stored.cache_control) == ("video/mp4", "max-age=3600")
        assert (fake.calls["tus_create"], fake.calls["tus_patch"]) == (1, 3)
        assert uploader.get_offset() == 700 * KIB  # a HEAD


def test_tus_can_use_the_direct_storage_host(fake: FakeSupabaseStorage, tmp_path: Path) -> None:
    """Supabase advises <ref>.storage.supabase.co for big uploads: a separate TUS URL (here the same fake
    under another host name) takes the resumable uploads, the REST calls stay on the project URL."""
    direct = fake.url.replace("127.0.0.1", "localhost") + "/storage/v1/upload/resumable"
    with make(
        fake, tmp_path / "cache", tus_threshold_bytes=0, tus_chunk_bytes=256 * KIB, tus_url=direct
    ) as storage:
        data = random_file(tmp_path / "big", 600 * KIB)
        storage.put_file("v/direct.mp4", data, "video/mp4")
    assert fake.read("ugc-video", "v/direct.mp4") == data.read_bytes()
    create = next(r for r in fake.requests if r.path.endswith("/upload/resumable"))
    assert create.headers["Host"].startswith("localhost:")  # the PATCHes follow the Location it returns


def test_the_local_cache_is_capped_least_recently_used_first(
    fake: FakeSupabaseStorage, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with make(fake, cache, cache_max_bytes=300 * KIB) as storage:
        files = [random_file(tmp_path / f"f{i}", 200 * KIB) for i in range(3)]
        for i, f in enumerate(files):
            storage.put_file(f"v/{i}.mp4", f, "video/mp4")
        cached = list(cache.rglob("*.mp4"))
        assert sum(p.stat().st_size for p in cached) <= 300 * KIB
        assert [p.name for p in cached] == ["2.mp4"]  # the newest stays
        again = storage.local_path("v/0.mp4")  # evicted: downloaded again, same bytes
        assert again.read_bytes() == files[0].read_bytes()
