"""A SyncClient left open closes at interpreter exit, and exit never hangs on it: one
client's broker answers and gets a proper Connection.Close; the other's goes silent
(a proxy that stops forwarding, as a dead network would), and the process still ends
within CLOSE_TIMEOUT_S and a margin. (aiormq itself waits 2 s for a Close-Ok; the
SyncClient's cap of CLOSE_TIMEOUT_S over the whole close is the second bound.)"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import textwrap
import time
from urllib.parse import urlsplit

from asyncinvoke.sync_client import CLOSE_TIMEOUT_S
from tests.conftest import AMQP_URL, ROOT, Namespace

# A method frame on channel 0 with class 10 (connection), method 50 (close): a client
# ending its connection properly sends it, a process that merely dies does not.
CONNECTION_CLOSE = b"\x00\x0a\x00\x32"


class Proxy:
    """Forwards TCP to the broker until frozen; keeps what the client sent."""

    def __init__(self) -> None:
        self.frozen = asyncio.Event()
        self.from_client = bytearray()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        broker = urlsplit(AMQP_URL)
        return AMQP_URL.replace(f"{broker.hostname}:{broker.port or 5672}", f"127.0.0.1:{port}")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        broker = urlsplit(AMQP_URL)
        up_reader, up_writer = await asyncio.open_connection(broker.hostname, broker.port or 5672)

        async def pump(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, keep: bytearray | None
        ) -> None:
            while chunk := await source.read(65536):
                if keep is not None:
                    keep.extend(chunk)
                if self.frozen.is_set():
                    continue  # swallowed: the other side waits for an answer that never comes
                sink.write(chunk)
                await sink.drain()

        with contextlib.suppress(ConnectionError):
            await asyncio.gather(
                pump(reader, up_writer, self.from_client), pump(up_reader, writer, None)
            )
        for stream in (writer, up_writer):
            stream.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


SCRIPT = """
import sys
from asyncinvoke import SyncClient
answering = SyncClient(url=sys.argv[1])
silent = SyncClient(url=sys.argv[2])
answering.connect()
silent.connect()
print("connected", flush=True)
sys.stdin.readline()  # until the test has frozen the silent one's proxy
"""


async def test_open_clients_close_at_exit_and_a_silent_broker_does_not_hang_it(
    namespace: Namespace,
) -> None:
    answering, silent = Proxy(), Proxy()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", textwrap.dedent(SCRIPT), await answering.start(),
        await silent.start(),
        env=namespace.env(), cwd=str(ROOT),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdin is not None and process.stdout is not None
        # The script's own line, first: the clients write nothing to its stdout.
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line == b"connected\n"
        silent.frozen.set()
        sent_before = len(silent.from_client)
        process.stdin.write(b"exit\n")
        await process.stdin.drain()
        started = time.monotonic()
        code = await asyncio.wait_for(process.wait(), CLOSE_TIMEOUT_S + 15)
        took = time.monotonic() - started
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await answering.stop()
        await silent.stop()
    assert code == 0
    assert took < CLOSE_TIMEOUT_S + 10, f"exit took {took:.1f} s"
    assert CONNECTION_CLOSE in answering.from_client, "the open client was not closed at exit"
    # The silent one was asked to close too; its close was never answered, and exit went on.
    assert CONNECTION_CLOSE in silent.from_client[sent_before:]
