"""Numbers in the docs that a recorded run produced: records, and the tables regenerated from them.

A record is a small JSON file under `docs/recorded/` holding what a run printed (the demo's rows, cautions and
differences; an ablation's paired table) with the run's config and the commit that produced it. The README and
docs/results.md hold their tables between marker comments, `<!-- NAME:begin -->` ... `<!-- NAME:end -->`;
`rebalance report tables` records runs and rewrites those blocks, and the tests check that the committed docs
show exactly what the records hold (and that the demo's config is the recorded one, so a config change forces a
new recording). Re-recording after a change is one command:

    rebalance demo --threads 1 --out runs/demo-new
    rebalance report tables --demo runs/demo-new --write README.md docs/results.md
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from rebalance_ref.files import write_json_atomic, write_text_atomic

RECORDED_DIR = Path("docs/recorded")
DOCS = ("README.md", "docs/results.md")  # the files whose marked tables `rebalance report tables --write` rewrites
DEMO_RECORD = "demo.json"
DEMO_BLOCK = "demo-table"
DEMO_COMMAND = "rebalance demo --threads 1"
_MARKER = re.compile(r"<!-- ([a-z0-9:-]+):(begin|end) -->")


# --- records --------------------------------------------------------------------------------------------------

def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ValueError(f"{what}: no such file {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{what}: {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {path} must hold a JSON object")
    return data


def _unknown_code() -> dict:
    return {"commit": None, "dirty": None}


def demo_record(run_dir: str | Path) -> dict:
    """The record of a demo run folder: from its `results.json`, what the demo printed (rows, cautions,
    differences, teacher check, wall time per phase), its config and the commit that ran it."""
    results = _read_json(Path(run_dir) / "results.json", "--demo")
    missing = [k for k in ("config", "rows", "full_minus_baseline") if k not in results]
    if missing:
        raise ValueError(f"--demo: {run_dir}/results.json lacks {', '.join(missing)} (not a demo run folder?)")
    return {"command": DEMO_COMMAND, "code": results.get("code", _unknown_code()),
            **{k: results[k] for k in ("config", "rows", "cautions", "full_minus_baseline", "teacher_check",
                                       "stage1_convergence", "phases_s") if k in results}}


def ablation_record(ablation_dir: str | Path) -> dict:
    """The record of a `rebalance ablate` folder: preset, seeds, config, the paired table, wall time, commit."""
    record = _read_json(Path(ablation_dir) / "ablation.json", "--ablation")
    missing = [k for k in ("preset", "seeds", "config", "table") if k not in record]
    if missing:
        raise ValueError(f"--ablation: {ablation_dir}/ablation.json lacks {', '.join(missing)}")
    return {"command": f"rebalance ablate --preset {record['preset']} --seeds {record['seeds']} "
                       f"--jobs {record.get('jobs', 1)}", "code": record.get("code", _unknown_code()),
            **{k: record[k] for k in ("preset", "seeds", "jobs", "config", "table", "seconds") if k in record}}


def ablation_block_name(preset: str) -> str:
    return f"ablation-table:{preset}"


def load_records(recorded: str | Path = RECORDED_DIR) -> dict[str, dict]:
    """Every record in `recorded`, by block name: the demo's under `DEMO_BLOCK`, each ablation's under
    `ablation_block_name(preset)`."""
    recorded = Path(recorded)
    records = {}
    if (recorded / DEMO_RECORD).is_file():
        records[DEMO_BLOCK] = _read_json(recorded / DEMO_RECORD, "record")
    for path in sorted(recorded.glob("ablation-*.json")):
        record = _read_json(path, "record")
        records[ablation_block_name(record["preset"])] = record
    return records


def _commit_words(record: dict) -> str:
    code = record.get("code") or {}
    commit = (code.get("commit") or "unknown")[:7]
    return f"commit {commit}" + (" with uncommitted changes" if code.get("dirty") else "")


# --- the blocks -----------------------------------------------------------------------------------------------

def demo_block(record: dict) -> str:
    """The demo's table as the docs show it: the table the demo printed, its cautions, the reading, and where
    the numbers come from."""
    from rebalance.demo import summarise
    from rebalance_torch.evaluate import markdown_table

    lines = [markdown_table(record["rows"]), ""]
    lines += [f"- ⚠ {note}" for note in record.get("cautions", [])]
    if record.get("cautions"):
        lines.append("")
    lines += [summarise(record["full_minus_baseline"]), ""]
    if record.get("teacher_check"):
        lines += ["Teacher check before stage 2 (validation NDCG@10, teacher vs stage-1 student): " + ", ".join(
            f"{k} {r['teacher']:.1f} vs {r['student']:.1f}" for k, r in record["teacher_check"].items()) + ".", ""]
    lines += [
              "R-mean: % (higher is better); I2I … T2IT: NDCG@10 × 100 (higher is better), ROUGE-L relevance "
              "(the paper's) or, in the \"attr\" columns, relevance from the scenes' true attributes; gap: the "
              "modality gap ‖mean v − mean t‖, a diagnostic (lower: images and captions share one region). "
              f"Recorded by `{record.get('command', DEMO_COMMAND)}` at {_commit_words(record)} "
              f"(`docs/recorded/{DEMO_RECORD}`); `rebalance report tables` regenerates this table."]
    return "\n".join(lines)


def ablation_block(record: dict) -> str:
    """An ablation's paired table (condition − baseline, mean ± std over seeds) with where it comes from."""
    from rebalance.ablate import table_markdown

    seconds = (record.get("seconds") or {}).get("total")
    wall = f", {seconds:.0f} s" if seconds is not None else ""
    return (table_markdown(record["table"]) + "\n\n"
            + f"Recorded by `{record['command']}` at {_commit_words(record)}{wall} "
              f"(`docs/recorded/ablation-{record['preset']}.json`).")


def render(name: str, record: dict) -> str:
    return demo_block(record) if name == DEMO_BLOCK else ablation_block(record)


def blocks_in(text: str, where: str = "text") -> dict[str, str]:
    """The marked blocks of a document, by name (their current content, markers excluded). Unbalanced or nested
    markers are a ValueError naming `where`."""
    blocks, open_name, open_end = {}, None, 0
    for m in _MARKER.finditer(text):
        name, kind = m.group(1), m.group(2)
        if kind == "begin":
            if open_name is not None:
                raise ValueError(f"{where}: <!-- {name}:begin --> inside the open block {open_name!r}")
            open_name, open_end = name, m.end()
        else:
            if open_name != name:
                raise ValueError(f"{where}: <!-- {name}:end --> without its begin")
            blocks[name] = text[open_end:m.start()].strip("\n")
            open_name = None
    if open_name is not None:
        raise ValueError(f"{where}: <!-- {open_name}:begin --> has no end marker")
    return blocks


def replace_blocks(text: str, contents: dict[str, str], where: str = "text") -> tuple[str, list[str]]:
    """`text` with each marked block named in `contents` replaced (markers kept); returns (text, names replaced).
    Blocks without content here are left as they are."""
    present = blocks_in(text, where)
    done = []
    for name, content in contents.items():
        if name not in present:
            continue
        pattern = re.compile(rf"(<!-- {re.escape(name)}:begin -->\n)(?:.*?\n)?(<!-- {re.escape(name)}:end -->)", re.S)
        text, n = pattern.subn(lambda m, c=content: m.group(1) + c + "\n" + m.group(2), text)
        if n != 1:
            raise ValueError(f"{where}: the markers of {name!r} must each stand on their own line")
        done.append(name)
    return text, done


def regenerate(paths: list[str | Path], recorded: str | Path = RECORDED_DIR,
               log: Callable[[str], None] = print) -> dict[str, list[str]]:
    """Rewrite the marked blocks of each file in `paths` from the records in `recorded`; returns, per file, the
    blocks rewritten."""
    rendered = {name: render(name, record) for name, record in load_records(recorded).items()}
    if not rendered:
        raise ValueError(f"no records in {recorded} (record a run first: --demo RUN or --ablation DIR)")
    changed = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise ValueError(f"--write: no such file {path}")
        text, done = replace_blocks(path.read_text(), rendered, str(path))
        write_text_atomic(path, text)
        changed[str(path)] = done
        log(f"{path}: {', '.join(done) if done else 'no marked block with a record'}")
    return changed


def record_runs(demo: str | Path | None, ablations: list[str | Path], recorded: str | Path = RECORDED_DIR,
                log: Callable[[str], None] = print) -> list[Path]:
    """Write the records of a demo run folder and of ablation folders into `recorded`; returns the files."""
    recorded = Path(recorded)
    recorded.mkdir(parents=True, exist_ok=True)
    written = []
    if demo is not None:
        record = demo_record(demo)
        write_json_atomic(recorded / DEMO_RECORD, record, indent=2)
        written.append(recorded / DEMO_RECORD)
    for folder in ablations:
        record = ablation_record(folder)
        path = recorded / f"ablation-{record['preset']}.json"
        write_json_atomic(path, record, indent=2)
        written.append(path)
    for path in written:
        record = json.loads(path.read_text())
        log(f"recorded {path} ({_commit_words(record)})")
    return written
