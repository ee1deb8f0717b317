"""`chatfactory chat`: a terminal client for a running server. Streams answers, keeps the
conversation on the server (/v1/conversations), and says when a template answer replaced the
model's. Reads one message per line; /new starts over, /quit (or end of input) leaves."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import httpx


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat with a running server in the terminal", description=__doc__)
    p.add_argument("--url", default=os.environ.get("CHATFACTORY_URL", "http://127.0.0.1:8000/v1"),
                   help="the server's API base (default http://127.0.0.1:8000/v1, or CHATFACTORY_URL)")
    p.add_argument("--key", default=None, help="API key (default: CHATFACTORY_API_KEY or OPENAI_API_KEY)")
    p.add_argument("--model", help="model to chat with (default: the server's first)")
    p.add_argument("--conversation", help="continue this conversation id")
    p.add_argument("--temperature", type=float)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--seed", type=int)
    p.set_defaults(func=run)


class ChatError(Exception):
    pass


class ChatClient:
    def __init__(self, url: str, key: str | None, timeout: float = 300.0):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def _check(self, r: httpx.Response) -> None:
        if r.status_code >= 400:
            r.read()
            try:
                msg = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                msg = r.text[:300]
            raise ChatError(f"{r.status_code}: {msg}")

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise ChatError(f"cannot reach {self.http.base_url}{path}: {e}") from None
        self._check(r)
        return r.json()

    def send(self, conv_id: str, content: str, **params: Any) -> Iterator[dict]:
        """Stream one turn: yields the chunk objects."""
        body = {"content": content, "stream": True, **{k: v for k, v in params.items() if v is not None}}
        try:
            with self.http.stream("POST", f"/conversations/{conv_id}/messages", json=body) as r:
                self._check(r)
                for line in r.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[len("data: "):]
                    if data == "[DONE]":
                        return
                    obj = json.loads(data)
                    if "error" in obj:
                        raise ChatError(obj["error"]["message"])
                    yield obj
        except httpx.HTTPError as e:
            raise ChatError(f"connection to the server failed: {e}") from None


def _flag_note(chunk: dict, choice: dict) -> str | None:
    """A line explaining a template answer (or an answer cut by moderation), else None."""
    if choice.get("finish_reason") != "content_filter":
        return None
    side = choice.get("template_used") or "output"
    results = ((chunk.get("moderation") or {}).get(side) or {}).get("results") or [{}]
    cats = sorted(k for k, v in (results[0].get("categories") or {}).items() if v)
    what = "your message" if side == "input" else "the model's answer"
    return f"[moderation: {what} was flagged ({', '.join(cats) or 'policy'}); a template answer was shown instead]"


def chat_loop(client: ChatClient, args: argparse.Namespace, stdin: TextIO, out: TextIO) -> int:
    interactive = stdin.isatty()
    conv_id = args.conversation
    if conv_id:
        client.request("GET", f"/conversations/{conv_id}")  # fail now if it does not exist
    while True:
        if interactive:
            out.write("you> ")
            out.flush()
        line = stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/new":
            conv_id = None
            out.write("[new conversation]\n")
            continue
        if conv_id is None:
            conv_id = client.request("POST", "/conversations", json={"model": args.model} if args.model else {})["id"]
            out.write(f"[conversation {conv_id}]\n")
        out.write("assistant> ")
        out.flush()
        note = None
        try:
            for chunk in client.send(conv_id, text, model=args.model, temperature=args.temperature,
                                     max_tokens=args.max_tokens, seed=args.seed):
                for choice in chunk.get("choices", []):
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        out.write(piece)
                        out.flush()
                    note = note or _flag_note(chunk, choice)
        except ChatError as e:
            out.write(f"\n[error: {e}]\n")
            continue
        out.write("\n" + (note + "\n" if note else ""))
        out.flush()
    return 0


def run(args: argparse.Namespace) -> int:
    from chatfactory.cli import UserError

    key = args.key or os.environ.get("CHATFACTORY_API_KEY") or os.environ.get("OPENAI_API_KEY")
    client = ChatClient(args.url, key)
    try:
        return chat_loop(client, args, sys.stdin, sys.stdout)
    except ChatError as e:
        raise UserError(str(e)) from None
