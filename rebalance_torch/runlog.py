"""The run log of a run folder: `metrics.jsonl` (one JSON line per logged step and per validation), `log.txt`
(every message), and a progress bar on a terminal."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from rebalance_ref.files import read_jsonl, write_text_atomic

METRICS_FILE = "metrics.jsonl"


class RunLog:
    """`metrics.jsonl` and `log.txt` of a run folder; `echo` also goes to the caller's `log`."""

    def __init__(self, run_dir: Path, log: Callable[[str], None]):
        self.run_dir, self._log = Path(run_dir), log
        self.metrics_path = self.run_dir / METRICS_FILE

    def echo(self, message: str) -> None:
        self._log(message)
        with open(self.run_dir / "log.txt", "a") as handle:
            handle.write(message + "\n")

    def write(self, row: dict) -> None:
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(row) + "\n")

    def truncate(self, stage: int, step: int) -> None:
        """Drop rows logged after (stage, step): a resumed run rewrites them. The file is replaced atomically, so a
        kill during the rewrite leaves the old history, never an empty file."""
        if not self.metrics_path.is_file():
            return
        kept = [row for row in read_metrics(self.run_dir) if (row["stage"], row["step"]) <= (stage, step)]
        write_text_atomic(self.metrics_path, "".join(json.dumps(row) + "\n" for row in kept))


class SilentLog(RunLog):
    """The run log of processes other than 0: they write and say nothing (process 0 logs once for all)."""

    def echo(self, message: str) -> None:
        pass

    def write(self, row: dict) -> None:
        pass

    def truncate(self, stage: int, step: int) -> None:
        pass


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of a run folder's `metrics.jsonl` (empty when there is none). A torn last line — a run killed
    mid-append — is dropped with a warning; the next `truncate` (every resume) rewrites the file without it."""
    path = Path(run_dir) / METRICS_FILE
    return read_jsonl(path) if path.is_file() else []


class Progress:
    """A progress bar with ETA on a terminal (click.progressbar); silent elsewhere."""

    def __init__(self, length: int, label: str, enabled: bool):
        self.bar = None
        if enabled and sys.stderr.isatty() and length > 0:
            import click

            self.bar = click.progressbar(length=length, label=label, show_eta=True, file=sys.stderr)
            self.bar.__enter__()

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
