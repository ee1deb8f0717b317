"""Load test of `chatfactory serve`: N concurrent streaming clients on loopback.

For each concurrency level (default 1, 4, 16) the clients send streaming chat completions for
a bounded time; we report aggregate tokens/s, time-to-first-token p50/p95, errors, and then
check that every exchange is in the server's database exactly as it was streamed. Beside it,
in the same run (never at the same time): llama.cpp (`llama-cpp-python`, 2 threads) on the
same GGUF, single stream, and the time per answer with moderation on vs off.

    .venv/bin/python bench/serve_load.py                       # SmolLM2-135M-Instruct, ~3 min
    .venv/bin/python bench/serve_load.py --levels 1,4 --seconds 10 --model PATH
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa

SAMPLING: dict = {}  # top_p / top_k from the command line, sent to both servers

PROMPTS = [
    "Explain how a classification algorithm works.",
    "Write a short poem about the sea.",
    "What are three tips for staying focused while studying?",
    "Give me a recipe idea for a quick vegetarian dinner.",
    "Why is the sky blue? Answer briefly.",
    "Summarise the plot of Romeo and Juliet in a few sentences.",
    "What is the difference between a list and a tuple in Python?",
    "Suggest a name for a friendly robot and explain why.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


class Server:
    """`chatfactory serve` in a subprocess (its own GIL: the load generator must not share it)."""

    def __init__(
        self, model: str, db_url: str, extra_env: dict[str, str] | None = None, extra_args: list[str] = ()
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, **(extra_env or {}))
        cmd = [
            sys.executable,
            "-m",
            "chatfactory.cli",
            "serve",
            "--model",
            model,
            "--port",
            str(self.port),
            "--db",
            db_url,
            "--log-level",
            "warning",
            *extra_args,
        ]
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.time() + 600
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise RuntimeError("server did not start in 10 minutes")
        self.model = httpx.get(f"{self.url}/v1/models").json()["data"][0]["id"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@dataclass
class Exchange:
    conversation_id: str | None = None
    text: str = ""
    ttft: float | None = None
    seconds: float = 0.0
    completion_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None


@dataclass
class Level:
    concurrency: int
    wall_s: float = 0.0
    exchanges: list[Exchange] = field(default_factory=list)
    window_s: float = 0.0  # from the first request to the deadline: every client busy
    start_counters: dict = field(default_factory=dict)
    window_counters: dict = field(default_factory=dict)
    end_counters: dict = field(default_factory=dict)

    def engine_delta(self, name: str, until: dict) -> float:
        return until.get(name, 0.0) - self.start_counters.get(name, 0.0)

    @property
    def ok(self) -> list[Exchange]:
        return [e for e in self.exchanges if e.error is None]

    def summary(self) -> dict:
        ok = self.ok
        tokens = sum(e.completion_tokens for e in ok)
        ttfts = [e.ttft for e in ok if e.ttft is not None]
        return {
            **self.engine_summary(),
            "concurrency": self.concurrency,
            "requests": len(self.exchanges),
            "errors": len(self.exchanges) - len(ok),
            "completion_tokens": tokens,
            "wall_s": round(self.wall_s, 2),
            "tokens_per_s": round(tokens / self.wall_s, 1) if self.wall_s else 0.0,
            "ttft_p50_ms": round(percentile(ttfts, 0.5) * 1000),
            "ttft_p95_ms": round(percentile(ttfts, 0.95) * 1000),
            "s_per_answer_mean": round(statistics.mean(e.seconds for e in ok), 3) if ok else None,
        }

    def engine_summary(self) -> dict:
        """From the server's /metrics: the engine's tokens/s while every client was active (the
        window, no drain) and its mean batch; prefill tokens the prefix cache saved."""
        tok, steps = "chatfactory_engine_tokens_total", "chatfactory_engine_decode_steps_total"
        if tok not in self.end_counters:
            return {}
        n_window = self.engine_delta(tok, self.window_counters)
        n_steps = self.engine_delta(steps, self.end_counters)
        return {
            "window_tokens_per_s": round(n_window / self.window_s, 1) if self.window_s else None,
            "mean_batch": round(self.engine_delta(tok, self.end_counters) / n_steps, 1) if n_steps else None,
            "prefix_cache_reused_tokens": int(self.engine_delta("chatfactory_prefix_cache_reused_tokens_total", self.end_counters)),
            **self.engine_time(),
        }

    def engine_time(self) -> dict:
        """Where the engine's time went while every client was active: decoding, admitting
        newcomers (the batch waits), or idle; and the mean wait of a request in its queue."""
        if "engine_decode_s" not in self.window_counters or not self.window_s:
            return {}
        decode = self.engine_delta("engine_decode_s", self.window_counters)
        admit = self.engine_delta("engine_admit_s", self.window_counters)
        n = self.engine_delta("chatfactory_engine_admitted_total", self.window_counters)
        wait = self.engine_delta("chatfactory_engine_queue_wait_seconds_total", self.window_counters)
        return {"engine_decode_share": round(decode / self.window_s, 3),
                "engine_admit_share": round(admit / self.window_s, 3),
                "queue_wait_mean_ms": round(1000 * wait / n) if n else None}


async def one_exchange(
    client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int, seed: int
) -> Exchange:
    ex = Exchange()
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        **SAMPLING,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                ex.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return ex
            done = False
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    ex.error = chunk["error"]["message"]
                    return ex
                ex.conversation_id = ex.conversation_id or chunk.get("conversation_id")
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        if ex.ttft is None:
                            ex.ttft = time.perf_counter() - t0
                        ex.text += piece
                    ex.finish_reason = choice.get("finish_reason") or ex.finish_reason
                if chunk.get("usage"):
                    ex.completion_tokens = chunk["usage"]["completion_tokens"]
            if not done:
                ex.error = "stream ended without [DONE]"
    except httpx.HTTPError as e:
        ex.error = f"{type(e).__name__}: {e}"
    ex.seconds = time.perf_counter() - t0
    return ex


async def run_level(url: str, model: str, concurrency: int, seconds: float, max_tokens: int) -> Level:
    level = Level(concurrency)
    stop_at = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def worker(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop_at:  # start no new request after the deadline
            i = next(counter)
            level.exchanges.append(
                await one_exchange(client, model, PROMPTS[i % len(PROMPTS)], max_tokens, seed=i)
            )

    async def at_deadline() -> None:
        # the engine's token count while all `concurrency` clients were active (no drain)
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        level.window_counters = await asyncio.to_thread(engine_counters, url)

    limits = httpx.Limits(max_connections=concurrency + 4)
    level.start_counters = engine_counters(url)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        level.window_s = stop_at - t0
        await asyncio.gather(at_deadline(), *(worker(client) for _ in range(concurrency)))
        level.wall_s = time.perf_counter() - t0  # includes the tail of requests started before the deadline
    level.end_counters = engine_counters(url)
    return level


def engine_counters(url: str) -> dict[str, float]:
    """The server's engine counters from /metrics (summed over models)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        for name in ("chatfactory_engine_decode_steps_total", "chatfactory_engine_tokens_total",
                     "chatfactory_prefix_cache_reused_tokens_total", "chatfactory_engine_admitted_total",
                     "chatfactory_engine_queue_wait_seconds_total"):
            if line.startswith(name + "{"):
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        for phase in ("decode", "admit"):
            if line.startswith("chatfactory_engine_seconds_total{") and f'phase="{phase}"' in line:
                key = f"engine_{phase}_s"
                out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def check_database(db_url: str, exchanges: list[Exchange]) -> dict:
    """Every successful exchange: user message + assistant message with the streamed text."""
    engine = sa.create_engine(db_url)
    missing, mismatched = 0, 0
    with engine.connect() as c:
        for ex in exchanges:
            if ex.error is not None:
                continue
            rows = c.execute(
                sa.text(
                    "SELECT role, content, finish_reason FROM messages WHERE conversation_id = :c ORDER BY position"
                ),
                {"c": ex.conversation_id},
            ).all()
            roles = [r[0] for r in rows]
            if roles != ["user", "assistant"]:
                missing += 1
            elif rows[1][1] != ex.text or rows[1][2] != ex.finish_reason:
                mismatched += 1
    engine.dispose()
    return {"checked": sum(e.error is None for e in exchanges), "missing": missing, "mismatched": mismatched}


def llama_cpp_single_stream(gguf: Path, n: int, max_tokens: int, threads: int = 2) -> dict:
    try:
        from llama_cpp import Llama
    except ImportError as e:
        return {"skipped": f"llama-cpp-python not importable ({e})"}
    llm = Llama(model_path=str(gguf), n_threads=threads, n_ctx=2048, verbose=False, seed=0)
    llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=4)  # warm-up
    tokens, seconds = 0, 0.0
    for i in range(n):
        t0 = time.perf_counter()
        r = llm.create_chat_completion(
            messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            max_tokens=max_tokens,
            temperature=0.7,
            top_p=SAMPLING.get("top_p", 1.0),  # llama-cpp-python's own defaults are 0.95 / 40: pass ours
            top_k=SAMPLING.get("top_k", 0),
        )
        seconds += time.perf_counter() - t0  # prompt processing included, as in our numbers
        tokens += r["usage"]["completion_tokens"]
    return {
        "threads": threads,
        "answers": n,
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 1),
    }


async def sequential(url: str, model: str, n: int, max_tokens: int) -> list[Exchange]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        return [
            await one_exchange(client, model, PROMPTS[i % len(PROMPTS)], max_tokens, seed=i) for i in range(n)
        ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--levels", default="1,4,16", help="concurrency levels, comma-separated")
    ap.add_argument(
        "--seconds", type=float, default=30.0, help="load time per level (requests started before it end)"
    )
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--top-p", type=float, default=None, help="nucleus sampling for both servers (default: off)")
    ap.add_argument("--top-k", type=int, default=None, help="top-k for both servers (default: off)")
    ap.add_argument("--llama-answers", type=int, default=8, help="llama.cpp single-stream answers (0: skip)")
    ap.add_argument(
        "--moderation-answers", type=int, default=8, help="answers each with moderation on/off (0: skip)"
    )
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    SAMPLING.update({k: v for k, v in (("top_p", args.top_p), ("top_k", args.top_k)) if v is not None})

    out: dict = {"model": args.model, "max_tokens": args.max_tokens, "load": os.getloadavg(), "levels": []}
    tmp = Path(tempfile.mkdtemp(prefix="cf-bench-"))

    if args.llama_answers:
        from chatfactory.model import pretrained

        gguf = pretrained.ensure(args.model) if args.model in pretrained.REGISTRY else Path(args.model)
        out["llama_cpp"] = llama_cpp_single_stream(gguf, args.llama_answers, args.max_tokens)
        print("llama.cpp single stream:", out["llama_cpp"], flush=True)

    db_url = f"sqlite:///{tmp / 'bench.db'}"
    server = Server(args.model, db_url)
    try:
        asyncio.run(sequential(server.url, server.model, 2, 16))  # warm-up (not counted)
        all_ex: list[Exchange] = []
        for c in [int(x) for x in args.levels.split(",")]:
            level = asyncio.run(run_level(server.url, server.model, c, args.seconds, args.max_tokens))
            s = level.summary()
            out["levels"].append(s)
            all_ex += level.exchanges
            errors = sorted({e.error for e in level.exchanges if e.error})[:3]
            print(f"concurrency {c:>2}: {s}" + (f" errors: {errors}" if errors else ""), flush=True)
        time.sleep(1.0)  # let the last commits land
        out["database"] = check_database(db_url, all_ex)
        print("database check:", out["database"], flush=True)
        if args.moderation_answers:
            on = asyncio.run(sequential(server.url, server.model, args.moderation_answers, args.max_tokens))
    finally:
        server.stop()

    if args.moderation_answers:
        off_server = Server(
            args.model,
            f"sqlite:///{tmp / 'bench-off.db'}",
            extra_args=["--moderation-config", str(Path(__file__).with_name("moderation_off.yaml"))],
        )
        try:
            asyncio.run(sequential(off_server.url, off_server.model, 2, 16))
            off = asyncio.run(
                sequential(off_server.url, off_server.model, args.moderation_answers, args.max_tokens)
            )
        finally:
            off_server.stop()

        def per_token_ms(xs: list[Exchange]) -> float:
            ok = [e for e in xs if e.error is None]
            return 1000 * sum(e.seconds for e in ok) / max(1, sum(e.completion_tokens for e in ok))

        def per_answer(xs: list[Exchange]) -> float:
            return statistics.mean(e.seconds for e in xs if e.error is None)

        on_ms, off_ms = per_token_ms(on), per_token_ms(off)
        out["moderation"] = {
            "answers": args.moderation_answers,
            "s_per_answer_on": round(per_answer(on), 3),
            "s_per_answer_off": round(per_answer(off), 3),
            "ms_per_token_on": round(on_ms, 2),
            "ms_per_token_off": round(off_ms, 2),
            "overhead_pct_per_token": round(100 * (on_ms / off_ms - 1), 1),
        }
        print("moderation on vs off:", out["moderation"], flush=True)

    out["load_after"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    fails = []
    if any(level["errors"] for level in out["levels"]):
        fails.append("errors under load")
    if out.get("database", {}).get("missing") or out.get("database", {}).get("mismatched"):
        fails.append("exchanges missing or different in the database")
    print("OK" if not fails else "FAILED: " + "; ".join(fails))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
