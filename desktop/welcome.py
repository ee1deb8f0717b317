"""The welcome chat shown on a brand-new data folder, and the session restored on later starts.

A first-time user opens an empty window and does not know that nothing leaves the machine,
where their chats go, or that there are hidden instructions they can read. A short stored
chat says so, in the same view they will use; it is an ordinary session they can delete.
It is written once per database (the `welcomed` setting), only when there are no sessions at
all, so an imported or restored history is never joined by a stray welcome.
"""

from __future__ import annotations

from pathlib import Path

WELCOME_TITLE = "Welcome to chatfactory"
WELCOMED_KEY = "welcomed"
LAST_SESSION_KEY = "last_session"


def welcome_text(data_folder: Path) -> str:
    return (
        "**Welcome!** This chat is a short tour; delete it whenever you like.\n\n"
        "- **It runs offline.** The model answering here runs on this computer: nothing you type "
        "is sent anywhere, and no account or connection is needed.\n"
        f"- **Your chats stay here**, in a local database in `{data_folder}`. Search them with "
        "**Ctrl+F**; export them from the File menu.\n"
        "- **Ctrl+N** starts a new chat.\n"
        "- The model gets **hidden instructions** around each turn: choose them with the "
        "**Instructions** picker at the top, and read exactly what the model receives with "
        "**Chat ▸ Show hidden instructions** (Ctrl+Shift+H).\n"
        "- **Settings** (Ctrl+,) set how long and how creative answers are, the theme and the "
        "moderation filter; the **Models** page adds other models.\n\n"
        "Press **Ctrl+N** and type your first message."
    )


def ensure_welcome(store) -> int | None:
    """On a brand-new database write the welcome chat and return its id; otherwise None.
    Records `welcomed` either way, so an existing user upgrading never gets one."""
    if store.get_setting(WELCOMED_KEY, False):
        return None
    sid = None
    if store.count_sessions(archived=None) == 0:
        sid = store.create_session(title=WELCOME_TITLE)
        store.add_message(sid, "assistant", welcome_text(Path(store.path).parent), finish_reason="stop")
    store.set_setting(WELCOMED_KEY, True)
    return sid


def remember_session(store, session_id: int | None) -> None:
    """Kept on every switch, so that the next start, after a crash too, opens the same chat."""
    store.set_setting(LAST_SESSION_KEY, session_id)


def last_session(store) -> int | None:
    """The chat open when the app last stopped, if it still exists."""
    from engine.store import NotFoundError

    sid = store.get_setting(LAST_SESSION_KEY)
    if not isinstance(sid, int):
        return None
    try:
        store.get_session(sid)
    except NotFoundError:
        return None
    return sid
