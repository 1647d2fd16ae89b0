"""What the server tells about input that looks wrong: per-row unseen counts and a rate-limited warning.

Each scored block of rows comes with :class:`Scores`: the probabilities, the number of unseen
fields per row (the answer's ``unseen_fields``; the rule is in :mod:`ctrlab.data.unseen`), and per
checked field how many rows were unseen and the first such row, to name the fields and show a
value in the warning. These are O(fields) per request, so that the rows in flight cost no more
than their counts.

:class:`UnseenLog` logs a request whose rows are on average mostly unseen (more than
:data:`~ctrlab.data.unseen.HIGH_UNSEEN_SHARE` of the checked fields), at most one line per
:data:`UNSEEN_LOG_INTERVAL_S`, with the count of those not logged since: a client that sends only
wrong values cannot flood the log. ``/health`` counts them all (``unseen_requests``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import polars as pl

from ..data.unseen import HIGH_UNSEEN_SHARE, UnseenCheck

UNSEEN_LOG_INTERVAL_S = 60.0
"""At most one warning line about mostly unseen requests per this many seconds."""

UNSEEN_FIELDS_NAMED = 3
"""The warning names this many of the request's most unseen fields."""


@dataclass
class Scores:
    """One request's (or slice's) answer from the model thread."""

    probabilities: np.ndarray
    """float32 ``(rows,)``."""
    unseen_fields: np.ndarray
    """int32 ``(rows,)``: unseen checked fields per row."""
    unseen_rows: np.ndarray
    """int64 ``(checked fields,)``: rows in which each field was unseen."""
    first_unseen: np.ndarray
    """int64 ``(checked fields,)``: the first such row (-1: none)."""

    @property
    def rows(self) -> int:
        return len(self.probabilities)

    @classmethod
    def of(cls, probabilities: np.ndarray, mask: np.ndarray) -> "Scores":
        """From the probabilities and the bool unseen mask ``(rows, fields)`` of the same rows."""
        return cls.split(probabilities, mask, [0, len(probabilities)])[0]

    @classmethod
    def split(cls, probabilities: np.ndarray, mask: np.ndarray, offsets) -> list["Scores"]:
        """One model call's probabilities and unseen mask ``(rows, fields)`` -> each request's scores
        (request ``k`` has rows ``offsets[k]:offsets[k + 1]``). A call without unseen values, the usual
        case, costs one count over the mask."""
        offsets = np.asarray(offsets).tolist()  # Python ints slice faster than numpy ones
        bounds = list(zip(offsets[:-1], offsets[1:]))
        none_rows, none_first = _no_unseen(mask.shape[1])
        if not mask.any():
            per_row = np.zeros(len(probabilities), dtype=np.int32)
            return [cls(probabilities[lo:hi], per_row[lo:hi], none_rows, none_first) for lo, hi in bounds]
        per_row = mask.view(np.uint8).sum(axis=1, dtype=np.int32)
        out = []
        for lo, hi in bounds:
            part = mask[lo:hi]
            if per_row[lo:hi].any():
                rows = part.view(np.uint8).sum(axis=0, dtype=np.int64)
                first = np.where(rows > 0, part.argmax(axis=0), -1).astype(np.int64)
                out.append(cls(probabilities[lo:hi], per_row[lo:hi], rows, first))
            else:
                out.append(cls(probabilities[lo:hi], per_row[lo:hi], none_rows, none_first))
        return out

    @classmethod
    def concat(cls, parts: list["Scores"]) -> "Scores":
        """Consecutive slices of one request, in order -> the request's scores."""
        if len(parts) == 1:
            return parts[0]
        first = np.full_like(parts[0].first_unseen, -1)
        offset = 0
        for part in parts:
            take = (first < 0) & (part.first_unseen >= 0)
            first[take] = part.first_unseen[take] + offset
            offset += part.rows
        return cls(np.concatenate([p.probabilities for p in parts]), np.concatenate([p.unseen_fields for p in parts]),
                   np.sum([p.unseen_rows for p in parts], axis=0), first)


_NO_UNSEEN: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _no_unseen(fields: int) -> tuple[np.ndarray, np.ndarray]:
    """Read-only (rows unseen, first row) per field for requests without unseen values, made once."""
    hit = _NO_UNSEEN.get(fields)
    if hit is None:
        rows, first = np.zeros(fields, dtype=np.int64), np.full(fields, -1, dtype=np.int64)
        rows.flags.writeable = first.flags.writeable = False
        hit = _NO_UNSEEN[fields] = (rows, first)
    return hit


def mostly_unseen(scores: Scores, fields: int) -> bool:
    """Whether the rows average more than :data:`HIGH_UNSEEN_SHARE` of ``fields`` checked fields unseen."""
    return fields > 0 and scores.rows > 0 and float(scores.unseen_fields.mean()) > HIGH_UNSEEN_SHARE * fields


class UnseenLog:
    """Counts mostly-unseen requests and logs one line about them per ``interval_s`` at most."""

    def __init__(self, check: UnseenCheck, logger: logging.Logger, interval_s: float = UNSEEN_LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.check = check
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self.requests = 0
        """Mostly-unseen requests so far (logged or not)."""
        self._last = -float("inf")
        self._suppressed = 0

    def note(self, scores: Scores, frame: pl.DataFrame) -> bool:
        """Count and maybe log the request of ``frame`` if it is mostly unseen; True if it was."""
        if not mostly_unseen(scores, len(self.check)):
            return False
        self.requests += 1
        now = self.clock()
        if now - self._last < self.interval_s:
            self._suppressed += 1
            return True
        self._last = now
        order = np.argsort(-scores.unseen_rows, kind="stable")[:UNSEEN_FIELDS_NAMED]
        details = "; ".join(self.check.describe(int(j), self.check.example(frame, int(j), int(scores.first_unseen[j])))
                            + f" ({int(scores.unseen_rows[j])} of {scores.rows} rows)"
                            for j in order if scores.unseen_rows[j] > 0)
        since = (f" ({self._suppressed} more such requests since the last line were not logged)"
                 if self._suppressed else "")
        self._suppressed = 0
        self.logger.warning(
            "ctrlab serve: a request of %d rows is mostly values unseen in training: on average %.1f of %d checked "
            "fields per row; %s. Its probabilities are the model's guess for unknown values: check that the client "
            "writes values as the training data does%s", scores.rows, float(scores.unseen_fields.mean()),
            len(self.check), details, since)
        return True
