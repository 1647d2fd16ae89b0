"""Errors for bad input data: each names the file, line and column, and what to do."""
from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data. The message reads ``<file>, line <n>, column '<c>': <problem>. Fix: <what to do>``."""

    def __init__(
        self,
        problem: str,
        file: str | Path | None = None,
        line: int | None = None,
        column: str | None = None,
        fix: str | None = None,
    ):
        self.problem = problem
        self.file = str(file) if file is not None else None
        self.line = line
        self.column = column
        self.fix = fix
        where = []
        if self.file:
            where.append(self.file)
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column!r}")
        msg = (", ".join(where) + ": " if where else "") + problem
        if fix:
            msg += f". Fix: {fix}"
        super().__init__(msg)


class DataWarning(UserWarning):
    """Input data that is read as asked but probably not as meant (e.g. most of a split's values
    unseen in train, or numbers float32 cannot hold); the message says what to check."""
