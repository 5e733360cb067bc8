"""`rebalance env`: versions and thread counts, for bug reports and benchmark notes."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata

import click

from rebalance.cli.options import json_option

# Distribution names (as pip knows them) of the packages rebalance uses.
_PACKAGES = ("numpy", "scipy", "torch", "onnxruntime", "onnx", "onnxscript", "matplotlib", "click", "pillow")


def environment_report() -> dict:
    """Versions of the packages rebalance uses (None when missing) and the thread settings in force."""
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    threads: dict[str, object] = {
        "cpu_count": os.cpu_count(),
        **{var: os.environ.get(var) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
    }
    if versions["torch"] is not None:
        import torch

        threads["torch_num_threads"] = torch.get_num_threads()
        threads["torch_cuda_available"] = torch.cuda.is_available()
    return {"python": platform.python_version(), "platform": platform.platform(), "versions": versions,
            "threads": threads}


@click.command()
@json_option
def env(as_json: bool) -> None:
    """Print package versions and thread counts."""
    report = environment_report()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"python   {report['python']}  ({report['platform']})")
    for name, version in report["versions"].items():
        click.echo(f"{name:<12} {version or 'not installed'}")
    for key, value in report["threads"].items():
        click.echo(f"{key:<22} {value}")


COMMANDS = [env]
