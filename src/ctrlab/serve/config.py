"""Options of the prediction server (no heavy imports: the command line reads the defaults)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    """Options of ``ctrlab serve``."""

    host: str = "127.0.0.1"
    """Address to bind; loopback by default (put a reverse proxy in front to expose it)."""
    port: int = 8000
    """TCP port."""
    backend: str = "auto"
    """``onnx`` (ONNX Runtime), ``torch`` (eager PyTorch) or ``auto`` (ONNX when the artifact has it)."""
    threads: int | None = None
    """Intra-op threads of the model runtime (default: the runtime's choice, one per core)."""
    max_body_bytes: int = 32 << 20
    """Largest request body; larger ones get 413."""
    max_request_rows: int = 65536
    """Most records in one request; more get 413."""
    max_batch_rows: int = 8192
    """Most rows the batcher puts into one model call (a larger single request runs alone)."""
    max_wait_ms: float = 2.0
    """Longest the batcher waits for requests still being encoded before it calls the model."""
    queue_size: int = 1024
    """Requests that may wait for the model; beyond that the server answers 503."""
    access_log: bool = False
    """uvicorn's per-request access log (off: it costs throughput)."""
