"""Options of the prediction server (no heavy imports: the command line reads the defaults)."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import ConfigError


@dataclass
class ServeConfig:
    """Options of ``ctrlab serve``. Checked when created: a bad value is a :class:`ConfigError` naming it."""

    host: str = "127.0.0.1"
    """Address to bind; loopback by default (put a reverse proxy in front to expose it)."""
    port: int = 8000
    """TCP port, 1..65535."""
    backend: str = "auto"
    """``onnx`` (ONNX Runtime), ``torch`` (eager PyTorch) or ``auto`` (ONNX when the artifact has it)."""
    threads: int | None = None
    """Intra-op threads of the model runtime (default: the runtime's choice, one per core)."""
    max_body_bytes: int = 32 << 20
    """Largest request body; larger ones get 413."""
    max_request_rows: int = 65536
    """Most records in one request; more get 413."""
    max_batch_rows: int = 4096
    """Most rows in one model call while no small requests are arriving (see ``interleave_rows``). A
    larger request is scored in slices of this size that take turns with smaller requests, so that one
    big request delays a single row by about one slice, not by the whole request. Larger calls cost
    less per row (one 4,096-row call against four 1,024-row ones: about 15% more rows/s for FinalMLP)."""
    interleave_rows: int = 256
    """Most rows in one model call while small requests (of at most this many rows) are arriving,
    that is, while one came in the last second: large requests are then scored in these shorter
    slices, so that a single row waits for about 2 ms of model time instead of about 6 (FinalMLP,
    2 cores), at some cost in large-request rows/s. Without small traffic calls take up to
    ``max_batch_rows``. Set it to ``max_batch_rows`` (or more) to turn this off."""
    max_wait_ms: float = 2.0
    """Longest the batcher waits for requests still being encoded before it calls the model."""
    queue_size: int = 1024
    """Requests that may wait for the model; beyond that the server answers 503."""
    max_rows_in_flight: int = 131072
    """Most rows of parsed requests held at once (waiting for the model or being scored). A request
    that does not fit waits until earlier ones are answered; smaller ones that fit go ahead. With
    ``max_body_bytes_in_flight`` this bounds the server's memory (docs/serving.md)."""
    max_body_bytes_in_flight: int = 64 << 20
    """Most bytes of request bodies over 32 KiB held at once (received, parsed, or waiting for room in
    ``max_rows_in_flight``); further large bodies are read only when room frees (they wait in TCP)."""
    parse_process: bool = True
    """Parse and check bodies over 32 KiB in a child process (one at a time), so that the parse of a
    large body never holds up the event loop; off: in a thread of the server's process."""
    api_docs: bool = False
    """Serve ``/docs``, ``/redoc`` and ``/openapi.json`` (off: they describe the service to anyone who asks)."""
    access_log: bool = False
    """uvicorn's per-request access log (off: it costs throughput)."""
    max_users: int = 10000
    """Most per-user states held by the two-stage endpoints (``PUT /users/{user}``: SDIM's bucket tables,
    SUAN's cached history); beyond it the least recently used is dropped (its next request gets 404 and
    the client sends the user again)."""

    def __post_init__(self):
        if not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ConfigError(f"serve: port {self.port!r} is not a TCP port; choose one in 1..65535 (--port)")
        positive = {"max_body_bytes": "--max-body-mb", "max_request_rows": "--max-request-rows",
                    "max_batch_rows": "--max-batch-rows", "interleave_rows": "--interleave-rows", "queue_size": "--queue-size",
                    "max_rows_in_flight": "--max-rows-in-flight", "max_body_bytes_in_flight": "--max-body-mb-in-flight",
                    "max_users": "--max-users"}
        for name, flag in positive.items():
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"serve: {name} must be a positive integer, got {value!r} ({flag})")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"serve: threads must be at least 1, got {self.threads!r} (--threads)")
        if self.max_wait_ms < 0:
            raise ConfigError(f"serve: max_wait_ms must be >= 0, got {self.max_wait_ms!r} (--max-wait-ms)")
        if self.max_request_rows > self.max_rows_in_flight:
            raise ConfigError(f"serve: max_request_rows ({self.max_request_rows}) exceeds max_rows_in_flight "
                              f"({self.max_rows_in_flight}): such a request could never be admitted; raise "
                              "--max-rows-in-flight or lower --max-request-rows")
        if self.max_body_bytes > self.max_body_bytes_in_flight:
            raise ConfigError(f"serve: max_body_bytes ({self.max_body_bytes}) exceeds max_body_bytes_in_flight "
                              f"({self.max_body_bytes_in_flight}); raise --max-body-mb-in-flight or lower --max-body-mb")
