"""Whether an encode may write to --output, decided before anything is written.

An output is this encode's when it is missing, empty, or holds the plan of the same encode
(same settings, same inputs): then a rerun resumes it, or changes nothing if it is finished.
Anything else is refused, naming what is there. `--overwrite` is the deliberate exception: the
dataset files there (plan, index, metadata, part directories, MDS shards) are removed first and
listed; other files are left alone, and the same encode's own output is still resumed.

With several ranks only rank 0 removes; the others wait until its plan is recorded, so no rank
starts a part that rank 0 is still clearing.
"""
from __future__ import annotations

import json
import re
import time
from typing import Any

from dig_scale.data.schema import INDEX_FILENAME, METADATA_FILENAME, DatasetMetadata

from .errors import EncodeError
from .output_store import OutputStore
from .plan import MANIFEST_FILENAME, PLAN_FILENAME

# What an object store is probed for: the names whose objects an encode would replace first.
_PROBED = (PLAN_FILENAME, METADATA_FILENAME, INDEX_FILENAME, f"part-000000/{MANIFEST_FILENAME}",
           f"part-000000/{INDEX_FILENAME}")
_DATASET_ENTRY = re.compile(rf"{re.escape(PLAN_FILENAME)}|{re.escape(INDEX_FILENAME)}|{re.escape(METADATA_FILENAME)}"
                            r"|part-\d{6}|shard\.\d+\.mds(\.\w+)?")
# A plan being written by another rank, or left by a killed one (dig_scale.atomic_file's temp name).
_PLAN_TEMP = re.compile(rf"\.{re.escape(PLAN_FILENAME)}\..*\.tmp")
_UNREADABLE = object()  # a plan file that is not a plan


def claim_output(store: OutputStore, plan: dict[str, Any], *, overwrite: bool, rank: int,
                 wait_s: float = 600.0, poll_s: float = 1.0) -> None:
    """Record `plan` in the output, or return if it is already there; refuse anything else unless
    `overwrite` (see the module docstring)."""
    problem, entries = foreign_contents(store, plan)
    if problem is None:
        if not entries:
            store.write_text(PLAN_FILENAME, json.dumps(plan, indent=1))
        return
    if not overwrite:
        raise EncodeError(f"--output {store}: {problem}; rerun the command that wrote it to resume it, choose "
                          "another --output, or pass --overwrite to replace its dataset files")
    if rank != 0 and not store.remote:  # an object store is refused by remove() below, on every rank at once
        _wait_for_plan(store, plan, wait_s, poll_s)
        return
    doomed = [name for name in entries if _DATASET_ENTRY.fullmatch(name)]
    store.remove(doomed)
    kept = [name for name in entries if name not in doomed]
    print(f"--overwrite: {store} {problem}; removed {', '.join(doomed) or 'nothing'}"
          + (f"; left in place (not dataset files): {', '.join(kept)}" if kept else ""))
    store.write_text(PLAN_FILENAME, json.dumps(plan, indent=1))


def foreign_contents(store: OutputStore, plan: dict[str, Any]) -> tuple[str | None, list[str]]:
    """(what in the output is not this encode's own work, or None; the output's top-level entries)."""
    # Listed before the plan is read: another rank writes its plan before anything else, so
    # entries of its work seen here imply a plan that the read below sees too.
    entries = [name for name in store.entries(_PROBED) if not _PLAN_TEMP.fullmatch(name)]
    recorded = _read_plan(store)
    if recorded == plan or (recorded is None and not entries):
        return None, entries
    finished = _finished_dataset(store)
    if isinstance(recorded, dict):
        what = f"{finished or 'an unfinished encode'} with other settings ({'; '.join(_plan_changes(recorded, plan))})"
    elif recorded is _UNREADABLE:
        what = f"an unreadable {PLAN_FILENAME}"
    elif finished:
        what = f"{finished} from another encode"
    else:
        what = f"{len(entries)} {'entry' if len(entries) == 1 else 'entries'} and no encode"
    return f"holds {what} (entries: {_listing(entries)})", entries


def _read_plan(store: OutputStore) -> dict[str, Any] | object | None:
    """The plan recorded in the output, None if there is none, _UNREADABLE if it is not a plan."""
    text = store.read_text(PLAN_FILENAME)
    if text is None:
        return None
    try:
        recorded = json.loads(text)
    except json.JSONDecodeError:
        return _UNREADABLE
    ok = isinstance(recorded, dict) and isinstance(recorded.get("settings"), dict) and "parts" in recorded
    return recorded if ok else _UNREADABLE


def _finished_dataset(store: OutputStore) -> str | None:
    text = store.read_text(METADATA_FILENAME)
    if text is None:
        return None
    try:
        meta = DatasetMetadata.from_json(text)
    except (ValueError, TypeError):
        return f"an unreadable {METADATA_FILENAME}"
    return f"a finished dataset of {meta.num_samples} samples ({meta.source.get('type')}, {meta.resolution} px)"


def _plan_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    changed = []
    for key, value in new["settings"].items():
        there = old["settings"].get(key)
        if there != value:  # long values (the source, the preprocessing) are only named
            shown = f"{there!r} there, {value!r} now"
            changed.append(f"{key}: {shown}" if len(shown) <= 80 else f"{key} differs")
    if changed:
        return changed
    old_parts, new_parts = old.get("parts", []), new["parts"]
    differing = sum(a != b for a, b in zip(old_parts, new_parts)) + abs(len(old_parts) - len(new_parts))
    return [f"the input changed ({differing} of {len(new_parts)} parts cover different files)"]


def _listing(entries: list[str], shown: int = 6) -> str:
    more = len(entries) - shown
    return ", ".join(entries[:shown]) + (f" and {more} more" if more > 0 else "")


def _wait_for_plan(store: OutputStore, plan: dict[str, Any], wait_s: float, poll_s: float) -> None:
    print(f"--overwrite: waiting up to {wait_s:.0f} s for rank 0 to clear {store} and record the plan")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if _read_plan(store) == plan:
            return
        time.sleep(poll_s)
    raise EncodeError(f"--output {store}: rank 0 did not record this encode's plan within {wait_s:.0f} s "
                      "(--overwrite); check that rank 0 runs with the same arguments")
