"""A TCP proxy that stands between the nodes of a test cluster and can cut one node off.

Run as its own process (`python netproxy.py`) so that relaying bytes never competes with
the test's clients for the interpreter lock. It reads one JSON command per line on stdin
and answers each with one JSON line on stdout:

- `{"op": "listen", "host": "127.0.0.11"}`: opens a listener on `host` with a port from
  the kernel and answers `{"port": N}`. The listener belongs to the node at `host`.
- `{"op": "target", "host": H, "port": P, "to": "127.0.0.11:PORT"}`: where that
  listener forwards (set again whenever the node restarts on another port).
- `{"op": "cut", "hosts": ["127.0.0.11"]}`: the nodes at those addresses can no longer
  talk to any other node, in either direction: open connections between them and the
  rest are aborted and new ones are closed as soon as they are accepted. Connections
  from addresses that belong to no node (the test's clients on 127.0.0.1) are untouched.
- `{"op": "heal"}`: every node can reach every other again.

Nodes must connect to their peers from their own address (Strata binds outgoing
connections to the address its listeners are on), which is how the proxy tells who is
calling.
"""

from __future__ import annotations

import asyncio
import json
import sys

CHUNK = 256 * 1024


class Proxy:
    def __init__(self) -> None:
        self.node_hosts: set[str] = set()
        self.cut: set[str] = set()
        self.targets: dict[tuple[str, int], tuple[str, int]] = {}
        self.conns: set[tuple[str, str, asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.servers: list[asyncio.base_events.Server] = []

    def blocked(self, source: str, owner: str) -> bool:
        if source == owner or source not in self.node_hosts:
            return False
        return source in self.cut or owner in self.cut

    async def listen(self, host: str) -> int:
        self.node_hosts.add(host)

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            port = writer.get_extra_info("sockname")[1]
            source = writer.get_extra_info("peername")[0]
            target = self.targets.get((host, port))
            if target is None or self.blocked(source, host):
                writer.transport.abort()
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*target)
            except OSError:
                writer.transport.abort()
                return
            entry = (source, host, writer, up_writer)
            self.conns.add(entry)
            try:
                await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
            finally:
                self.conns.discard(entry)
                writer.transport.abort()
                up_writer.transport.abort()

        server = await asyncio.start_server(accept, host, 0, limit=CHUNK)
        self.servers.append(server)
        return server.sockets[0].getsockname()[1]

    def apply_cut(self) -> None:
        for source, owner, down, up in list(self.conns):
            if self.blocked(source, owner):
                down.transport.abort()
                up.transport.abort()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.transport.abort()


async def main() -> None:
    proxy = Proxy()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        cmd = json.loads(line)
        op = cmd["op"]
        reply: dict = {"ok": True}
        if op == "listen":
            reply["port"] = await proxy.listen(cmd["host"])
        elif op == "target":
            host, port = cmd["to"].rsplit(":", 1)
            proxy.targets[(cmd["host"], cmd["port"])] = (host, int(port))
        elif op == "cut":
            proxy.cut = set(cmd["hosts"])
            proxy.apply_cut()
        elif op == "heal":
            proxy.cut = set()
        else:
            reply = {"ok": False, "error": f"unknown op {op!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
