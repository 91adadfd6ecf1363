"""Ports held on purpose by a test (`with HeldPorts() as held:`): those an old rule would pick, and ephemeral ones."""

from __future__ import annotations

import socket


class HeldPorts:
    """Sockets held open for a test: listening ports, and outgoing connections that take ephemeral ports."""

    def __init__(self):
        self.sockets: list[socket.socket] = []
        self.listening: set[int] = set()

    def listen(self, port: int) -> bool:
        """Hold `port` on every interface (as a TCP store binds it); False when it is taken already."""
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past connections' TIME_WAIT do not count
        try:
            s.bind(("", port))
            s.listen()
        except OSError:
            s.close()
            return False
        self.sockets.append(s)
        self.listening.add(port)
        return True

    def outgoing(self, n: int) -> None:
        """Open `n` connections to a local listener and keep both ends: `n` ephemeral ports are taken."""
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(n)
        self.sockets.append(server)
        for _ in range(n):
            client = socket.create_connection(server.getsockname())
            self.sockets += [client, server.accept()[0]]

    def close(self) -> None:
        """Close every socket."""
        for s in self.sockets:
            s.close()
        self.sockets.clear()

    def __enter__(self) -> HeldPorts:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
