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
    (tmp_path / ".env").write_text("CASTFLOW_PIPELINE__FPS=30\nCASTFLOW_PROVIDERS__FAL_KEY=fal-secret-123\n")
    s = Settings()
    assert s.pipeline.fps == 30
    assert s.providers.fal_key is not None
    assert s.providers.fal_key.get_secret_value() == "fal-secret-123"
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
        providers={"fal_key": "  id:secretXYZ\n"},  # type: ignore[arg-type]
        database={"url": "postgresql+psycopg://castflow:pwXYZ@db/castflow"},  # type: ignore[arg-type]
    )
    assert s.providers.fal_key is not None
    assert s.providers.fal_key.get_secret_value() == "id:secretXYZ"
    assert s.database_url == "postgresql+psycopg://castflow:pwXYZ@db/castflow"
    assert "XYZ" not in repr(s)
    with pytest.raises(ValidationError) as bad:
        Settings(data_dir=tmp_path, providers={"wavespeed_key": "abc\x07defXYZ"})  # type: ignore[arg-type]
    assert "control characters" in str(bad.value)
    assert "XYZ" not in str(bad.value)
