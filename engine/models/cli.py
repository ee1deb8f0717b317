"""`chatfactory models list | add FILE [--name N] | remove NAME | info FILE|NAME | export ...`."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="the models you can chat with: list, add a GGUF file, inspect")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="the bundled model and the ones you added").set_defaults(func=cmd_list)
    a = sub.add_parser("add", help="register a GGUF file (under its file name without .gguf)")
    a.add_argument("file")
    a.add_argument("--name", help="register under this name instead")
    a.set_defaults(func=cmd_add)
    r = sub.add_parser("remove", help="forget an added model (the file stays)")
    r.add_argument("name")
    r.set_defaults(func=cmd_remove)
    i = sub.add_parser("info", help="what a GGUF file holds: architecture, size, quantization, template")
    i.add_argument("model", help="registry name or .gguf file")
    i.set_defaults(func=cmd_info)
    ex = sub.add_parser("export", help="write a model as a Hugging Face folder (needs the training extra)")
    ex.add_argument("--model", required=True, help="registry name, chatfactory folder, HF folder or .gguf file")
    ex.add_argument("--out", required=True, help="folder to write (replaced atomically)")
    ex.add_argument("--format", default="hf", choices=["hf"], help="output format (default: hf)")
    ex.set_defaults(func=cmd_export)


def cmd_list(args: argparse.Namespace) -> int:
    from .registry import list_models

    for m in list_models():
        state = m.path if m.available else "MISSING: " + m.path
        params = f"{m.parameters / 1e6:.0f}M" if m.parameters else "?"
        print(f"{m.name}\t{m.source}\t{m.architecture} {params} {m.quantization}\t{m.size / 1e6:.0f} MB\t{state}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from .registry import add_model

    m = add_model(args.file, args.name)
    tmpl = "its own chat template" if m.has_chat_template else "no chat template (ChatML is used)"
    print(f"added {m.name}: {m.architecture}, {m.parameters / 1e6:.0f}M parameters, {m.quantization}, {tmpl}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from .registry import remove_model

    remove_model(args.name)
    print(f"removed {args.name}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .gguf_info import read_gguf_info
    from .registry import resolve

    name, path = resolve(args.model)
    info = read_gguf_info(path)
    print(f"{name}: {path}")
    print(f"  architecture  {info.architecture}")
    print(f"  parameters    {info.parameters:,}")
    print(f"  quantization  {info.quantization}")
    print(f"  context       {info.context_length}")
    print(f"  chat template {'yes' if info.chat_template else 'no (ChatML is used)'}")
    print(f"  KV cache      {info.kv_bytes_per_token() / 1024:.1f} KiB per token")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from engine.training.loader import load
    from engine.training.model.hf import export_hf_folder

    loaded = load(args.model)
    out = export_hf_folder(loaded.model, loaded.tokenizer, args.out)
    print(f"wrote {out} ({loaded.model.num_params() / 1e6:.1f}M parameters, from {loaded.source})")
    return 0
