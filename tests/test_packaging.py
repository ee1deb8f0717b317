"""The double-click bundle: built with PyInstaller, it opens and answers (slow: ~2 minutes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_bundle_builds_and_passes_its_self_test(tmp_path):
    if shutil.which("pyinstaller", path=str(Path(sys.executable).parent)) is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pyinstaller>=6"], check=True)
    subprocess.run(["bash", str(ROOT / "packaging" / "build_linux.sh"), sys.executable], cwd=ROOT, check=True,
                   timeout=1800)  # fmt: skip
    exe = ROOT / "dist" / "chatfactory" / "chatfactory"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "CHATFACTORY_HOME": str(tmp_path)}
    res = subprocess.run([str(exe), "--self-test"], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "self-test passed" in res.stdout
