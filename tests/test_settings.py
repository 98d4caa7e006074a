from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from castflow.settings import Settings


def test_defaults_are_embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings()
    assert s.data_dir == (tmp_path / ".castflow").resolve()
    assert s.database_url == f"sqlite:///{s.data_dir / 'castflow.db'}"
    assert s.is_embedded_db
    assert s.storage_root == s.data_dir / "storage"
    assert (s.providers.image, s.providers.speech, s.providers.lipsync) == ("local", "local", "local")
    assert s.pipeline.fps == 25


def test_environment_overrides_nested_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASTFLOW_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("CASTFLOW_DATABASE__URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("CASTFLOW_PIPELINE__MAX_WORKERS", "3")
    monkeypatch.setenv("CASTFLOW_STORAGE__ROOT", str(tmp_path / "media"))
    s = Settings()
    assert s.data_dir == tmp_path / "d"
    assert s.database_url == "postgresql+psycopg://u@h/db"
    assert not s.is_embedded_db
    assert s.pipeline.max_workers == 3
    assert s.storage_root == tmp_path / "media"


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("CASTFLOW_PIPELINE__FPS=30\nCASTFLOW_FAL__KEY=fal-secret-123\n")
    s = Settings()
    assert s.pipeline.fps == 30
    assert s.fal.key is not None
    assert s.fal.key.get_secret_value() == "fal-secret-123"
    # Secrets never show in reprs, dumps or JSON.
    assert "fal-secret-123" not in repr(s)
    assert "fal-secret-123" not in s.model_dump_json()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CASTFLOW_PIPELINE__FPS", "0"),
        ("CASTFLOW_PIPELINE__MAX_WORKERS", "many"),
        ("CASTFLOW_PROVIDERS__LIPSYNC", "nonexistent"),
        ("CASTFLOW_PIPELINE__DEFAULT_RESOLUTION", "4k"),
    ],
)
def test_invalid_values_fail_at_start_up(name: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert name.removeprefix("CASTFLOW_").split("__")[-1].lower() in str(info.value)


def test_secrets_are_trimmed_refused_without_echo_and_never_in_reprs(tmp_path: Path) -> None:
    s = Settings(
        data_dir=tmp_path,
        fal={"key": "  id:secretXYZ\n"},  # type: ignore[arg-type]
        database={"url": "postgresql+psycopg://castflow:pwXYZ@db/castflow"},  # type: ignore[arg-type]
    )
    assert s.fal.key is not None
    assert s.fal.key.get_secret_value() == "id:secretXYZ"
    assert s.database_url == "postgresql+psycopg://castflow:pwXYZ@db/castflow"
    assert "XYZ" not in repr(s)
    with pytest.raises(ValidationError) as bad:
        Settings(data_dir=tmp_path, wavespeed={"key": "abc\x07defXYZ"})  # type: ignore[arg-type]
    assert "control characters" in str(bad.value)
    assert "XYZ" not in str(bad.value)


def test_names_of_older_releases_are_read_into_the_vendors_groups_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys, prices and webhook settings moved into each vendor's group (CASTFLOW_<VENDOR>__…); the old
    variables still work, say the new name, and hold the value nowhere else."""
    monkeypatch.setenv("CASTFLOW_PROVIDERS__FAL_KEY", " id:oldXYZ ")
    monkeypatch.setenv("CASTFLOW_PROVIDERS__WAVESPEED_KEY", "ws-oldXYZ")
    monkeypatch.setenv("CASTFLOW_WEBHOOKS__WAVESPEED_SECRET", "whsec_oldXYZ")
    monkeypatch.setenv("CASTFLOW_WEBHOOKS__FAL_JWKS_URL", "https://rest.alpha.fal.ai/.well-known/jwks.json")
    monkeypatch.setenv("CASTFLOW_PRICES__LIPSYNC_PER_SECOND", '{"480p": 0.05, "720p": 0.1}')
    monkeypatch.setenv("CASTFLOW_PRICES__LIPSYNC_MIN_SECONDS", "3")
    monkeypatch.setenv("CASTFLOW_PRICES__IMAGE_EDIT_PER_IMAGE", '{"fal-ai/nano-banana/edit": 0.04}')
    monkeypatch.setenv("CASTFLOW_WAVESPEED__BASE_URL", "http://127.0.0.1:1")  # a new name beside old ones
    with pytest.warns(FutureWarning) as said:
        s = Settings(data_dir=tmp_path, providers={"image": "fal", "lipsync": "wavespeed"})
    messages = {str(w.message) for w in said}
    assert "CASTFLOW_PROVIDERS__FAL_KEY is now CASTFLOW_FAL__KEY (the old name is still read)" in messages
    assert any("CASTFLOW_WAVESPEED__WEBHOOK_SECRET" in m for m in messages)
    assert not any("XYZ" in m for m in messages)
    assert s.fal.key is not None
    assert s.fal.key.get_secret_value() == "id:oldXYZ"  # trimmed, as under its new name
    assert s.wavespeed.key is not None
    assert s.wavespeed.key.get_secret_value() == "ws-oldXYZ"
    assert s.wavespeed.webhook_secret is not None
    assert s.wavespeed.webhook_secret.get_secret_value() == "whsec_oldXYZ"
    assert s.fal.jwks_url == "https://rest.alpha.fal.ai/.well-known/jwks.json"
    assert s.wavespeed.price_per_second == {"480p": 0.05, "720p": 0.1}
    assert s.wavespeed.min_billed_seconds == 3.0
    assert s.fal.image_price("fal-ai/nano-banana/edit") == 0.04
    assert s.wavespeed.base_url == "http://127.0.0.1:1"
    assert "XYZ" not in repr(s)
    assert "XYZ" not in s.model_dump_json()


def test_a_new_name_wins_over_an_old_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASTFLOW_PROVIDERS__FAL_KEY", "old-key")
    monkeypatch.setenv("CASTFLOW_FAL__KEY", "new-key")
    with pytest.warns(FutureWarning, match="CASTFLOW_FAL__KEY"):
        s = Settings(data_dir=tmp_path)
    assert s.fal.key is not None
    assert s.fal.key.get_secret_value() == "new-key"


def test_vendor_limits_and_models_come_from_their_groups(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    assert s.image_model == "pillow-scene-v1"
    assert s.prompt_limit("fal-ai/nano-banana/edit") == 5_000  # fal's group
    assert s.script_limit("fal-ai/elevenlabs/tts/eleven-v3") == 3_000
    assert s.script_limit("espeak-ng") == 2_000  # the embedded model's, in the pipeline group
    assert s.script_limit("unknown-model") == s.pipeline.max_script_chars
    assert s.provider_limits() == {"local": 2, "upload": 8, "fal": 2, "wavespeed": 2}
    tuned = Settings(
        data_dir=tmp_path,
        providers={"image": "fal"},
        fal={"key": "k", "concurrency": 10, "image_model": "fal-ai/nano-banana-pro/edit"},
        pipeline={"script_limits": {"fal-ai/elevenlabs/tts/eleven-v3": 1_000}},
        campaign={"provider_limits": {"wavespeed": 5}},
    )  # type: ignore[arg-type]
    assert tuned.image_model == "fal-ai/nano-banana-pro/edit"
    assert tuned.script_limit("fal-ai/elevenlabs/tts/eleven-v3") == 1_000  # the pipeline's entry wins
    assert tuned.provider_limits() == {"local": 2, "upload": 8, "fal": 10, "wavespeed": 5}
