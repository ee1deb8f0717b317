"""Server settings (file < environment < flags), served model names, loopback detection."""

from __future__ import annotations

import pytest
from tiny_chat_model import tiny_model_folder

from chatfactory.server.runtime import load_engines, served_name
from chatfactory.server.settings import Settings, is_loopback


def test_precedence_file_env_flags(tmp_path, monkeypatch):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("port: 9001\nhost: 127.0.0.1\nmax_inflight: 3\nmodels: [a, b]\n")
    for var in ("CHATFACTORY_PORT", "CHATFACTORY_MAX_INFLIGHT", "CHATFACTORY_MODELS", "CHATFACTORY_HOST", "DATABASE_URL",
                "CHATFACTORY_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    s = Settings.load(cfg)
    assert (s.port, s.max_inflight, s.models) == (9001, 3, ["a", "b"])
    monkeypatch.setenv("CHATFACTORY_PORT", "9002")
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/x")
    monkeypatch.setenv("CHATFACTORY_MODELS", "c, d")
    s = Settings.load(cfg)
    assert (s.port, s.database_url, s.models) == (9002, "postgresql://db/x", ["c", "d"])  # env beats file
    assert Settings.load(cfg, port=9003, models=None).port == 9003  # flags beat env; None = not given


def test_bad_settings_are_clear(tmp_path):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("prot: 1\n")
    with pytest.raises(ValueError, match=r"serve.yaml: unknown setting\(s\) \['prot'\]"):
        Settings.load(cfg)
    cfg.write_text("port: -1\n")
    with pytest.raises(ValueError, match="serve.yaml: invalid settings .port"):
        Settings.load(cfg)
    with pytest.raises(FileNotFoundError):
        Settings.load(tmp_path / "missing.yaml")


def test_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.com")


def test_several_models_each_under_its_name(tmp_path):
    folder = tiny_model_folder(tmp_path / "my-model")
    assert served_name(str(folder)) == ("my-model", str(folder))
    assert served_name("smollm2-135m-instruct") == ("smollm2-135m-instruct", "smollm2-135m-instruct")
    assert served_name(f"alias={folder}") == ("alias", str(folder))
    engines = load_engines(Settings(models=[str(folder), f"alias={folder}"], max_batch=2))
    assert {name: e.name for name, e in engines.items()} == {"my-model": "my-model", "alias": "alias"}
    with pytest.raises(ValueError, match="given twice"):
        load_engines(Settings(models=[str(folder), str(folder)]))
