"""Typed configs for every stage: dataclasses filled from a YAML preset or file, then overrides.

    cfg = load_config(PretrainConfig, "tiny", ["model.n_layer=6", "train.lr=3e-3"])

A preset is a YAML file shipped in chatfactory/presets/ (named without ".yaml"); any other
string is a path to a YAML file. Overrides are "dotted.field=value" strings; values are parsed
as YAML (so 3e-3, true, null, [a, b] work) and coerced to the field's declared type. An unknown
field anywhere is an error that names it and the nearest known field.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
T = TypeVar("T")


def parse_duration(value: str | float | None) -> float | None:
    """Seconds from "110s", "5m", "1.5h", "90" or a number; None/""/"none" -> None."""
    if value is None or isinstance(value, (int, float)):
        return None if value is None else float(value)
    s = str(value).strip().lower()
    if s in ("", "none", "null"):
        return None
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(s|sec|m|min|h|hr)?", s)
    if not m:
        raise ValueError(f"not a duration: {value!r} (use e.g. 110s, 5m, 1.5h or a number of seconds)")
    scale = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}[m.group(2)]
    return float(m.group(1)) * scale


# ---- building dataclasses from nested dicts ---------------------------------------------------------
def from_dict(cls: type[T], data: dict | None, where: str = "") -> T:
    """Build dataclass `cls` from a nested dict, checking names and coercing types."""
    data = data or {}
    if not isinstance(data, dict):
        raise ValueError(f"{where or cls.__name__}: expected a mapping of fields, got {type(data).__name__}")  # noqa: TRY004
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in known:
            raise ValueError(f"unknown config field {path!r}{_suggest(key, known)}")
        kwargs[key] = _coerce(hints[key], value, path)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where or cls.__name__}: {e}") from None


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(known))})"


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        is_null = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_null and type(None) in typing.get_args(tp):
            return None
        errors = []
        for a in args:  # first member type that accepts the value wins (int before float before str)
            try:
                return _coerce(a, value, path)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if errors else f"{path}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        return from_dict(tp, value, path)
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (Any,)
        if isinstance(value, str):
            value = [value]  # a single path where a list is expected
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path}: expected a list, got {value!r}")
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected a mapping, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ValueError(f"{path}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{path}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except ValueError:
            raise ValueError(f"{path}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise ValueError(f"{path}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"{path}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ValueError(f"{path}: expected a string, got {value!r}")
        return str(value)
    return value


# ---- presets, files and overrides ----------------------------------------------------------------------
def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def read_yaml(preset_or_path: str | Path) -> dict:
    """A preset name (chatfactory/presets/NAME.yaml) or a YAML file path -> dict."""
    path = Path(preset_or_path)
    if not path.exists():
        candidate = PRESETS_DIR / f"{preset_or_path}.yaml"
        if not candidate.exists():
            raise FileNotFoundError(
                f"{preset_or_path}: no such config file or preset (presets: {', '.join(available_presets())})"
            )
        path = candidate
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config fields at the top level")  # noqa: TRY004
    data.pop("description", None)  # presets may say what they are for
    return data


def apply_override(data: dict, override: str | tuple[str, Any]) -> None:
    """"a.b.c=value" (value parsed as YAML) or ("a.b.c", value) into the nested dict."""
    if isinstance(override, tuple):
        key, value = override
    else:
        if "=" not in override:
            raise ValueError(f"override {override!r}: expected FIELD=VALUE, e.g. model.n_layer=6")
        key, raw = override.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw  # not YAML: keep the raw string (a path with odd characters, say)
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {override!r}: {p!r} is not a group of fields")  # noqa: TRY004
    node[parts[-1]] = value


def load_config(
    cls: type[T], preset_or_path: str | Path | None = None, overrides: list[str | tuple[str, Any]] | None = None
) -> T:
    """cls filled from the preset/file (if any), then the overrides, in order."""
    data = read_yaml(preset_or_path) if preset_or_path else {}
    for o in overrides or []:
        apply_override(data, o)
    return from_dict(cls, data)


def save_config(obj: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))


# ---- command-line plumbing shared by every stage ----------------------------------------------------------
Flags = dict[str, tuple]  # "--max-steps": ("train.max_steps", help[, extra add_argument kwargs])


def add_config_arguments(parser: argparse.ArgumentParser, flags: Flags, default_preset: str) -> None:
    """--preset, --config, --set FIELD=VALUE, plus direct flags: {"--max-steps": ("train.max_steps", help)}.
    A flag's value is parsed like a --set value; a flag with nargs gives a list."""
    parser.add_argument("--preset", default=default_preset, help=f"shipped preset ({', '.join(available_presets())})")
    parser.add_argument("--config", metavar="FILE", help="YAML config file (replaces --preset)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
        help="override any config field, e.g. --set model.n_layer=6 (repeatable)",
    )
    for flag, (field, help_text, *extra) in flags.items():
        kwargs = extra[0] if extra else {}
        parser.add_argument(flag, dest=_dest(field), default=None, help=f"{help_text} (= --set {field}=...)", **kwargs)


def config_from_args(cls: type[T], args: argparse.Namespace, flags: Flags) -> T:
    """The config a command line asks for: preset/file, then --set overrides, then direct flags."""
    overrides: list[str | tuple[str, Any]] = list(args.overrides)
    for field, *_rest in flags.values():
        value = getattr(args, _dest(field), None)
        if isinstance(value, list):
            overrides.append((field, value))  # nargs flags: a list of raw strings (paths), no YAML
        elif isinstance(value, bool):
            overrides.append((field, value))  # store_true flags
        elif value is not None:
            overrides.append(f"{field}={value}")
    return load_config(cls, args.config or args.preset, overrides)


def _dest(field: str) -> str:
    return "cfg__" + field.replace(".", "__")


# ---- the trainer's own config (every stage embeds one) -----------------------------------------------
@dataclasses.dataclass
class TrainConfig:
    """How to optimise: shared by pre-training, SFT, the reward model and PPO."""

    # optimiser (AdamW; no weight decay on norms, biases and embeddings)
    lr: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.0  # the schedule ends at lr * min_lr_ratio
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    # schedule: "wsd" (warmup, stable, decay over the last decay_frac of training), "cosine", "constant"
    schedule: str = "wsd"
    warmup_steps: int = 0
    decay_frac: float = 0.2
    # length: whichever comes first; with a time budget the schedule follows the clock
    max_steps: int | None = None
    time_budget: float | str | None = None  # seconds of training steps (eval/checkpoint pauses excluded): 110s, 5m, 1h
    # batch: the global batch in tokens fixes the optimisation; gradient accumulation makes it up
    micro_batch_size: int = 16  # sequences per forward pass per process
    seq_len: int = 256
    batch_tokens: int | None = None  # global tokens per optimizer step; None = micro_batch_size*seq_len*world
    # evaluation, logging, checkpoints
    eval_every: int = 0  # steps between validations (0: only at the end)
    eval_tokens: int | None = None  # tokens scored per validation (None: the whole val split)
    log_every: int = 10
    ckpt_every: int = 0  # steps between checkpoints (0: only at the end / on interrupt)
    ckpt_every_s: float | None = None  # or seconds between checkpoints
    keep_checkpoints: int = 2
    progress: bool = True  # tqdm bar on the console
    tensorboard: bool = False  # also write TensorBoard events (needs `tensorboard` installed)
    # hardware
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA with bf16, else fp32), "bf16", "fp32"
    compile: bool = False  # torch.compile the model
    fsdp: bool = False  # shard parameters, gradients and optimizer state across processes (FSDP2)
    threads: int | None = None  # torch.set_num_threads for CPU runs
    peak_flops: float | None = None  # for MFU; None = vendor peak (known GPUs) or a measured matmul
    seed: int = 0

    def __post_init__(self) -> None:
        self.time_budget = parse_duration(self.time_budget)
        if self.schedule not in ("wsd", "cosine", "constant"):
            raise ValueError(f"train.schedule must be wsd, cosine or constant, got {self.schedule!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"train.precision must be auto, bf16 or fp32, got {self.precision!r}")
        if not 0 <= self.decay_frac <= 1:
            raise ValueError(f"train.decay_frac must be in [0, 1], got {self.decay_frac}")
        for key in ("micro_batch_size", "seq_len"):
            if getattr(self, key) <= 0:
                raise ValueError(f"train.{key} must be positive, got {getattr(self, key)}")
