"""Request bodies -> checked raw frames: the JSON parse and the per-column checks, shared by the server's
event loop (small bodies) and its parse worker process (large ones, :mod:`ctrlab.serve.parse_worker`)."""
from __future__ import annotations

import re
from typing import Any

import orjson
import polars as pl

from .predictor import Predictor, RequestError

RECORDS_CHUNK = 2048
"""Records transposed and checked per step: each chunk's Python objects are freed before the next,
so that a 65,536-record request never holds two copies of itself."""


BODY_FORMS = '{"records": [{...}, ...]} or {"columns": {"field": [...], ...}}'


def parse_body(body: bytes, max_rows: int) -> tuple[str, Any]:
    """The request body -> ``("records", list)`` or ``("columns", dict)``, or a RequestError
    (400 not JSON, 413 too many rows, 422 wrong shape)."""
    if not body or body.isspace():  # (no strip(): it would copy a large body)
        raise RequestError(f"the body is empty; send {BODY_FORMS}", status=400)
    try:
        doc = orjson.loads(body)  # strict JSON: NaN, Infinity and numbers beyond float range are errors
    except orjson.JSONDecodeError as exc:
        hint = ("; NaN and Infinity are not JSON: send null for a missing value"
                if re.search(rb"NaN|Infinity", body) else "")
        raise RequestError(f"the body is not valid JSON: {exc}{hint}", status=400) from None
    if not isinstance(doc, dict):
        raise RequestError(f"the body must be a JSON object: {BODY_FORMS}")
    unknown = sorted(set(doc) - {"records", "columns"})
    if unknown:
        raise RequestError(f"unknown top-level key; the body is {BODY_FORMS}", field=str(unknown[0]))
    if len(doc) != 1:
        raise RequestError(f"give exactly one of 'records' and 'columns'; the body is {BODY_FORMS}")
    form, payload = next(iter(doc.items()))
    rows = len(payload) if form == "records" and isinstance(payload, list) else max(
        (len(v) for v in payload.values() if isinstance(v, list)), default=0) if isinstance(payload, dict) else 0
    if rows > max_rows:
        raise RequestError(f"{rows} rows in one request; the limit is {max_rows} (split the request, or start "
                           "the server with a larger --max-request-rows)", status=413, field=form)
    return form, payload


def check_body(predictor: Predictor, body, max_rows: int) -> pl.DataFrame:
    """A request body -> its checked raw frame, or a :class:`RequestError` naming the record and field."""
    form, payload = parse_body(body, max_rows)
    if form == "columns":
        return predictor.columns_to_frame(payload)
    if not isinstance(payload, list) or len(payload) <= RECORDS_CHUNK:
        return predictor.records_to_frame(payload)
    frames, offset = [], 0
    while payload:  # chunk by chunk, freeing each chunk's objects as it goes
        chunk = payload[:RECORDS_CHUNK]
        del payload[:RECORDS_CHUNK]
        try:
            frames.append(predictor.records_to_frame(chunk))
        except RequestError as exc:
            raise RequestError(exc.message, exc.status, exc.field,
                               None if exc.row is None else exc.row + offset) from None
        offset += len(chunk)
        del chunk
    return pl.concat(frames, how="vertical")
