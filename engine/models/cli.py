"""`chatfactory models list | add FILE [--name N] | remove NAME | info FILE|NAME | export ...
| catalogue [--ctx N] | download NAME [--quant Q]`."""

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
    c = sub.add_parser("catalogue", help="models you can download: size, memory needed, whether they fit")
    c.add_argument("--ctx", type=int, default=4096, help="context size for the estimate (default 4096)")
    c.set_defaults(func=cmd_catalogue)
    d = sub.add_parser("download", help="download a catalogue model (resumable) and register it")
    d.add_argument("name", help="catalogue id (see `models catalogue`), or a Hugging Face repo id + --file")
    d.add_argument("--quant", help="quantization, e.g. Q4_K_M or Q8_0 (default: the catalogue's choice)")
    d.add_argument("--file", help="file name in the repo, when NAME is a repo id")
    d.add_argument("--dest", help="folder for the file (default: the chatfactory cache's models folder)")
    d.add_argument("--name", dest="register_as", help="register under this name instead")
    d.set_defaults(func=cmd_download)


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


def cmd_catalogue(args: argparse.Namespace) -> int:
    from .catalogue import load_catalogue
    from .memory import available_memory, estimate, fit
    from .registry import list_models

    available = available_memory()
    have = {m.name for m in list_models() if m.available}
    free = f"{available / 2**30:.1f} GiB available" if available else "available memory unknown"
    print(f"memory at a {args.ctx}-token context ({free}):")
    for m in load_catalogue():
        f = m.file()
        n_ctx = min(args.ctx, m.context_length)
        est = estimate(m, n_ctx)
        size = f"{'~' if f.size_approx else ''}{f.size / 1e9:.2f} GB"
        flags = ["downloaded"] if m.registry_name() in have else []
        flags += ["gated: needs a token"] if m.gated else []
        capped = f" (at {n_ctx})" if n_ctx < args.ctx else ""
        badge = fit(est, available)
        line = f"{m.id:<24} {f.quant:<7} {size:>9}  needs {est.total / 2**30:5.2f} GiB{capped}  {badge:<8}"
        print(f"{line} {m.license:<14} {', '.join(flags)}".rstrip())
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    import sys

    from .download import Download, DownloadError, human

    if "/" in args.name and not args.file:
        print("error: a repo id needs --file (the GGUF file's name in the repo)", file=sys.stderr)
        return 2
    tty = sys.stderr.isatty()
    last = [-1.0]

    def show(p) -> None:
        if p.total_bytes:
            pct = 100 * p.done_bytes / p.total_bytes
            if not tty and pct < 100 and pct - last[0] < 5:  # a log file gets a line every 5 %
                return
            last[0] = pct
            eta = f", {p.eta_s:.0f} s left" if p.eta_s is not None else ""
            rate = f"{human(p.rate_bytes_per_s)}/s"
            line = f"{human(p.done_bytes)} of {human(p.total_bytes)} ({pct:.0f} %, {rate}{eta})"
        else:
            line = f"{human(p.done_bytes)}"
        print(("\r" + line.ljust(60)) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)

    try:
        dl = Download(args.name, args.file or args.quant, args.dest, progress=show, name=args.register_as)
        print(f"downloading {dl.filename} from {dl.repo} to {dl.dest_dir}", file=sys.stderr)
        result = dl.run()
    except DownloadError as e:
        print(("\n" if tty else "") + f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(("\n" if tty else "") + "interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    if tty:
        print(file=sys.stderr)
    entry = result.entry
    print(f"registered {entry.name}: {result.path}" if entry else str(result.path))
    return 0
