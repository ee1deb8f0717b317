"""One running app per database: a second launch brings the first window forward and exits.

Two apps on one database would step on each other: each start marks unfinished answers as
"interrupted", which would cut off the answer the other window is streaming, and both would
write settings. Users double-click twice, or click the dock icon of an app whose window is
behind others, so the second launch hands over to the first instead of failing.

A local socket (a Unix domain socket or a Windows named pipe, never the network) named after a
hash of the database path: tests and portable installs with their own `CHATFACTORY_HOME`
never meet. The first instance listens; a later one connects, writes `activate` and exits 0.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
from pathlib import Path

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtNetwork import QLocalServer, QLocalSocket

log = logging.getLogger(__name__)

ACTIVATE = b"activate"
CONNECT_TIMEOUT_MS = 500


def server_name(db: str | Path) -> str:
    """A short name, stable for one database file and user (Unix socket paths are limited to
    ~100 bytes, so the path itself cannot be the name)."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name (some containers): the path alone still separates
        user = ""
    key = f"{user}\0{Path(db).expanduser().resolve()}".encode()
    return "chatfactory-" + hashlib.sha256(key).hexdigest()[:20]


def notify_running(name: str, timeout_ms: int = CONNECT_TIMEOUT_MS) -> bool:
    """Ask a running instance to come forward; True when one answered (this process should exit)."""
    sock = QLocalSocket()
    sock.connectToServer(name)
    if not sock.waitForConnected(timeout_ms):
        return False
    sock.write(ACTIVATE + b"\n")
    sock.flush()
    sock.waitForBytesWritten(timeout_ms)
    sock.disconnectFromServer()
    if sock.state() != QLocalSocket.LocalSocketState.UnconnectedState:
        sock.waitForDisconnected(timeout_ms)
    return True


class SingleInstance(QObject):
    """The first instance's listener: emits `activate_requested` when a later launch knocks."""

    activate_requested = Signal()

    def __init__(self, name: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name
        self.server = QLocalServer(self)
        self.server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        self.server.newConnection.connect(self._accept)

    def listen(self) -> bool:
        """Start listening. A socket file left by a crashed instance is removed (the caller has
        already found that nobody answers on it); False if listening is impossible anyway, in
        which case the app simply runs without the hand-over."""
        if self.server.listen(self.name):
            return True
        if self.server.serverError() == QLocalSocket.LocalSocketError.AddressInUseError:
            QLocalServer.removeServer(self.name)
            if self.server.listen(self.name):
                return True
        log.warning("single instance: cannot listen on %s: %s", self.name, self.server.errorString())
        return False

    def close(self) -> None:
        self.server.close()

    @Slot()
    def _accept(self) -> None:
        while self.server.hasPendingConnections():
            sock = self.server.nextPendingConnection()
            sock.readyRead.connect(self._ready)
            if sock.bytesAvailable():
                self._read(sock)

    @Slot()
    def _ready(self) -> None:
        sock = self.sender()
        if isinstance(sock, QLocalSocket):
            self._read(sock)

    def _read(self, sock: QLocalSocket) -> None:
        """One message per connection: read it, then let the socket go (no signal connected to
        its destruction, which happens on close at the latest, as a child of the server)."""
        data = bytes(sock.readAll().data())
        if ACTIVATE in data:
            sock.readyRead.disconnect(self._ready)
            sock.abort()
            sock.deleteLater()
            log.info("another launch asked this window to come forward")
            self.activate_requested.emit()


def bring_forward(window) -> None:
    """Un-minimise, raise and focus `window` (the window manager may still only flash it)."""
    if window.isMinimized():
        window.showNormal()
    window.show()
    window.raise_()
    window.activateWindow()
