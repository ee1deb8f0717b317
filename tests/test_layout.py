"""The shape of the house: engine/ knows no Qt, the chat path no torch, the web server is gone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out = set()
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_the_users_top_level_layout():
    for name in ("pyproject.toml", "desktop", "engine", "assets", "tests", "packaging"):
        assert (ROOT / name).exists(), name
    assert not (ROOT / "src").exists()


def test_engine_never_imports_qt_or_desktop():
    offenders = [
        (str(p.relative_to(ROOT)), sorted(mods & {"PySide6", "PyQt5", "PyQt6", "shiboken6", "desktop"}))
        for p in (ROOT / "engine").rglob("*.py")
        if (mods := imported_modules(p)) & {"PySide6", "PyQt5", "PyQt6", "shiboken6", "desktop"}
    ]
    assert offenders == []


def test_only_the_training_stack_imports_torch():
    """At module level. (The optional MiniLM moderation encoder imports torch when a policy asks
    for it; the shipped policy does not, and the next test checks the chat path starts without.)"""
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "engine").rglob("*.py")
        if "torch" in imported_modules(p, top_level_only=True)
        and "training" not in p.relative_to(ROOT / "engine").parts
    ]
    assert offenders == []


def test_the_chat_path_starts_without_torch():
    code = (
        "import sys, engine.setup, engine.chat_cli, engine.store.cli, engine.models.cli;"
        # the Fine-tuning tab reads the user's data and sets up jobs in the window's process
        "import engine.finetune.sources, engine.finetune.job, engine.finetune.estimate;"
        "from engine.moderation import Moderator; Moderator.from_config(None).moderate('hello');"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_no_web_server_or_postgres_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for ds in project["optional-dependencies"].values() for d in ds]
    names = {d.split(">")[0].split("=")[0].split("[")[0].split("<")[0].strip().lower() for d in deps}
    assert not names & {"fastapi", "uvicorn", "sqlalchemy", "alembic", "psycopg", "psycopg2", "starlette"}
    for need in ("pyside6-essentials", "llama-cpp-python", "huggingface-hub", "sqlite-utils", "pytest-qt"):
        assert need in names, need
    assert project["scripts"]["chatfactory"] == "engine.cli:main"
    assert project["gui-scripts"]["chatfactory-desktop"] == "desktop.app:main"
