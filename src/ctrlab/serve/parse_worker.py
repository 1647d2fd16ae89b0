"""The server's parse worker: a child process that parses and checks large request bodies.

orjson holds the interpreter lock for a whole parse (about 0.1 s for a 10 MB body on an idle core),
and so does the transposition of records: done in the server's process, that stalls the event loop
and every single-row request with it. In a child process it runs beside the server instead.

The protocol is framed bytes on the child's stdin and stdout (no pickle): the server sends the 8-byte
little-endian length of a body, then the body; the child answers one status byte, the 8-byte length
of the payload, then the payload: status 0, the checked frame as an Arrow IPC stream; status 1, a
:class:`RequestError` as JSON (``message``, ``status``, ``field``, ``row``); status 2, an unexpected
error as JSON (``error``). Bodies are handled one at a time, so the child holds the Python objects of
one body at most.

    python -m ctrlab.serve.parse_worker ARTIFACT MAX_REQUEST_ROWS
"""
from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from pathlib import Path

import orjson
import polars as pl

from .predictor import RequestError

_LENGTH = 8
PARSE_WORKER_NICENESS = 10
"""How much lower the worker's CPU priority is than the server's (``os.nice``)."""


PIECE = 256 << 10
"""Bytes the event loop moves to or from the worker at a time."""


def _read_frame(pieces: list[bytes]) -> pl.DataFrame:
    return pl.read_ipc_stream(io.BytesIO(b"".join(pieces)))


class ParseWorkerFailed(RuntimeError):
    """The parse worker died or answered out of protocol (it is restarted for the next request)."""


class ParseWorker:
    """The server's handle on its parse worker process (one body at a time, started on demand)."""

    def __init__(self, artifact: str | Path, max_request_rows: int):
        self.command = [sys.executable, "-m", "ctrlab.serve.parse_worker", str(artifact), str(max_request_rows)]
        self.proc: asyncio.subprocess.Process | None = None
        self.lock = asyncio.Lock()

    async def start(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            # the worker imports the very ctrlab this server runs (not another install of it)
            package_root = str(Path(__file__).resolve().parents[2])
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                [package_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
            self.proc = await asyncio.create_subprocess_exec(*self.command, stdin=asyncio.subprocess.PIPE,
                                                             stdout=asyncio.subprocess.PIPE, env=env)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    async def check(self, chunks: list[bytes]) -> pl.DataFrame:
        """The checked frame of the body made of ``chunks``, or its RequestError.

        The event loop never copies or parses the whole body or answer at once (a 10 MB copy or
        Arrow read takes 3-9 ms, and every single-row request waits for it): the body goes out and the
        answer comes in by pieces of :data:`PIECE` bytes, and the answer is joined and read into a
        frame in a thread."""
        async with self.lock:
            await self.start()
            proc = self.proc
            try:
                proc.stdin.write(sum(map(len, chunks)).to_bytes(_LENGTH, "little"))
                for chunk in chunks:
                    view = memoryview(chunk)
                    for at in range(0, len(view), PIECE):
                        proc.stdin.write(view[at:at + PIECE])
                        await proc.stdin.drain()
                head = await proc.stdout.readexactly(1 + _LENGTH)
                left = int.from_bytes(head[1:], "little")
                pieces = []
                while left:
                    piece = await proc.stdout.read(min(left, PIECE))
                    if not piece:
                        raise asyncio.IncompleteReadError(b"", left)
                    pieces.append(piece)
                    left -= len(piece)
            except (OSError, asyncio.IncompleteReadError) as exc:
                self._discard()
                raise ParseWorkerFailed(f"the parse worker stopped ({type(exc).__name__}); it is restarted") from None
            except BaseException:  # cancelled mid-exchange: the stream is out of step, start afresh
                self._discard()
                raise
        if head[0] == 0:
            return await asyncio.to_thread(_read_frame, pieces)
        detail = orjson.loads(b"".join(pieces))
        if head[0] == 1:
            raise RequestError(detail["message"], detail["status"], detail["field"], detail["row"])
        raise ParseWorkerFailed(f"the parse worker failed: {detail['error']}")

    def _discard(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
        self.proc = None

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


def main(argv: list[str] | None = None) -> int:
    from .artifact import load_artifact
    from .parsing import check_body
    from .predictor import Predictor

    artifact, max_rows = (argv or sys.argv[1:])[:2]
    # Ctrl-C reaches the whole process group: the server stops this worker by closing its stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Parsing large bodies is bulk work: at a lower CPU priority it yields the cores to the server's
    # event loop and model thread, so single-row requests are not slowed by a large one being parsed.
    try:
        os.nice(PARSE_WORKER_NICENESS)
    except OSError:  # not permitted here: run at the server's priority
        pass
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    source = sys.stdin.buffer
    # The server verified the artifact's checksums before it started this process.
    predictor = Predictor(load_artifact(artifact, verify=False), backend="none")
    while True:
        head = source.read(_LENGTH)
        if len(head) < _LENGTH:
            return 0  # the server closed the pipe
        body = source.read(int.from_bytes(head, "little"))
        try:
            frame = check_body(predictor, body, int(max_rows))
            del body
            buffer = io.BytesIO()
            frame.write_ipc_stream(buffer)
            status, payload = 0, buffer.getvalue()
        except RequestError as exc:
            status, payload = 1, orjson.dumps({"message": exc.message, "status": exc.status, "field": exc.field,
                                               "row": exc.row})
        except Exception as exc:  # noqa: BLE001 - reported to the server, which answers 500
            status, payload = 2, orjson.dumps({"error": f"{type(exc).__name__}: {str(exc)[:500]}"})
        out.write(bytes([status]) + len(payload).to_bytes(_LENGTH, "little"))
        out.write(payload)
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
