"""The run log of a run folder: `metrics.jsonl` (one JSON line per logged step and per validation), `log.txt`
(every message), and a progress bar (`tqdm.auto`: a text bar on a terminal, a widget in a notebook)."""

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


def interactive() -> bool:
    """Whether someone is watching: stderr is a terminal, or the code runs in a Jupyter kernel."""
    if sys.stderr is not None and hasattr(sys.stderr, "isatty") and sys.stderr.isatty():
        return True
    shell = sys.modules.get("IPython")
    ipython = shell.get_ipython() if shell is not None and hasattr(shell, "get_ipython") else None
    return ipython is not None and "IPKernelApp" in getattr(ipython, "config", {})


class Progress:
    """A progress bar with ETA (`tqdm.auto`) named for its phase ("stage 1", "stage 2 — full"), showing the last
    logged loss and τ; silent when `enabled` is false or nobody watches (a pipe, a log file, CI)."""

    def __init__(self, length: int, label: str, enabled: bool):
        self.bar = None
        if enabled and length > 0 and interactive():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=length, desc=label, file=sys.stderr, leave=True, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def show(self, **numbers: float) -> None:
        """Numbers beside the bar (e.g. loss, τ): call with numbers already on the host — the trainer does so on
        logged steps only, so the bar never makes it read from the device."""
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in numbers.items()}, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
