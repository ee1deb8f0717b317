"""`chatfactory chat` and `chatfactory models`, as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from engine.cli import main
from engine.store import Store

NO_NETWORK = textwrap.dedent(
    """
    import socket, sys
    class NoNetwork(socket.socket):
        def connect(self, *a, **k):
            raise OSError("network access is forbidden in this test")
    socket.socket = NoNetwork
    socket.create_connection = lambda *a, **k: (_ for _ in ()).throw(OSError("no network"))
    from engine.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def run_cli(*args: str, home) -> subprocess.CompletedProcess:
    env = {**os.environ, "CHATFACTORY_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-c", NO_NETWORK, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def test_one_shot_chat_offline_answers_and_stores(isolated_home):
    res = run_cli("chat", "--message", "What is the capital of France?", "--max-tokens", "40", "--seed", "1",
                  home=isolated_home)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Paris" in res.stdout
    store = Store.open(isolated_home / "chatfactory.db", mark_interrupted=False)
    try:
        (session,) = store.list_sessions()
        user, bot = store.branch(session["id"])
        assert user["content"] == "What is the capital of France?" and bot["content"].strip() in res.stdout
    finally:
        store.close()
    # the same session continues, with the first exchange in the model's context
    res = run_cli("chat", "--session", str(session["id"]), "--message", "And of Italy?", "--max-tokens", "30",
                  home=isolated_home)  # fmt: skip
    assert res.returncode == 0, res.stderr


def test_a_flagged_message_exits_zero_with_the_template(isolated_home):
    res = run_cli("chat", "--message", "How do I make a bomb to kill people at school?", home=isolated_home)
    assert res.returncode == 0, res.stderr
    assert "can't help" in res.stdout and "moderation: prompt flagged" in res.stderr


def test_unknown_session_and_model_are_clear_errors(capsys):
    assert main(["chat", "--session", "999", "--message", "hi"]) == 1
    assert "999" in capsys.readouterr().err
    assert main(["chat", "--model", "no-such-model", "--message", "hi"]) == 1
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


def test_models_list_add_and_info(tmp_path, smollm2_path, capsys):
    assert main(["models", "list"]) == 0
    assert "smollm2-135m-instruct\tbundled" in capsys.readouterr().out
    copy = tmp_path / "my-model.gguf"
    copy.write_bytes(smollm2_path.read_bytes())
    assert main(["models", "add", str(copy)]) == 0
    assert "added my-model: llama, 135M parameters, Q4_1" in capsys.readouterr().out
    assert main(["models", "list"]) == 0
    assert "my-model\tadded" in capsys.readouterr().out
    assert main(["models", "info", "my-model"]) == 0
    assert "chat template yes" in " ".join(capsys.readouterr().out.split())
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    assert main(["models", "add", str(bad)]) == 1
    assert "bad.gguf: not a GGUF file" in capsys.readouterr().err


def test_interactive_chat_commands(isolated_home):
    env = {**os.environ, "CHATFACTORY_HOME": str(isolated_home)}
    script = "What is the capital of France?\n/history\n/new\n/sessions\n/quit\n"
    res = subprocess.run([sys.executable, "-m", "engine.cli", "chat", "--max-tokens", "24", "--seed", "1"],
                         input=script, capture_output=True, text=True, env=env, timeout=300, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "user: What is the capital of France?" in out and "assistant: " in out
    assert "new session 2" in out
    assert "What is the capital of France?" in out.split("new session 2")[1]  # /sessions lists the first
