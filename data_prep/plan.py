"""The bookkeeping that makes encoding resumable.

The output root holds a plan (the settings and one fingerprint per part). A part is finished
once its manifest exists, written only after all its shards: a rerun redoes every part without
a manifest, and refuses to mix in parts from different settings or a changed input.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .errors import EncodeError
from .output_store import OutputStore
from .sources import Part

PLAN_FILENAME = "dig_scale_plan.json"
MANIFEST_FILENAME = "dig_scale_part.json"


def make_plan(settings: dict[str, Any], parts: list[Part]) -> dict[str, Any]:
    """The plan as stored (JSON-normalised, so it compares equal to what is read back)."""
    return json.loads(json.dumps({"settings": settings, "parts": [p.fingerprint() for p in parts]}))


def claim_plan(store: OutputStore, plan: dict[str, Any]) -> bool:
    """Record the plan in a new output, or check it matches the one there. True if it was there."""
    existing = store.read_text(PLAN_FILENAME)
    if existing is None:
        store.write_text(PLAN_FILENAME, json.dumps(plan, indent=1))
        return False
    old = json.loads(existing)
    if old == plan:
        return True
    changed = [f"{key}: {old['settings'].get(key)!r} there, {value!r} now"
               for key, value in plan["settings"].items() if old["settings"].get(key) != value]
    if not changed:
        old_parts, new_parts = old["parts"], plan["parts"]
        differing = sum(a != b for a, b in zip(old_parts, new_parts)) + abs(len(old_parts) - len(new_parts))
        changed = [f"the input changed ({differing} of {len(plan['parts'])} parts cover different files)"]
    raise EncodeError(f"--output {store}: already holds an encoding with other settings ({'; '.join(changed)}); "
                      "rerun with the original settings to resume it, or choose another --output")


def manifest_name(part: Part) -> str:
    return f"{part.name}/{MANIFEST_FILENAME}"


def write_manifest(store: OutputStore, part: Part, manifest: dict[str, Any]) -> None:
    store.write_text(manifest_name(part), json.dumps({"fingerprint": part.fingerprint(), **manifest}))


def finished_parts(store: OutputStore, parts: list[Part]) -> dict[int, dict[str, Any]]:
    """Part index -> manifest, for the parts already finished with these exact inputs."""
    def read(part: Part) -> dict[str, Any] | None:
        text = store.read_text(manifest_name(part))
        manifest = json.loads(text) if text else None
        return manifest if manifest and manifest.get("fingerprint") == part.fingerprint() else None

    with ThreadPoolExecutor(max_workers=16 if store.remote else 1) as pool:
        manifests = list(pool.map(read, parts))
    return {part.index: m for part, m in zip(parts, manifests) if m is not None}
