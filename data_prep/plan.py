"""The bookkeeping that makes encoding resumable.

The output root holds a plan (the settings and one fingerprint per part). A part is finished
once its manifest exists, written only after all its shards: a rerun redoes every part without
a manifest. output_claim.py records the plan, refusing an output that holds anything else.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .output_store import OutputStore
from .sources import Part

PLAN_FILENAME = "dig_scale_plan.json"
MANIFEST_FILENAME = "dig_scale_part.json"


def make_plan(settings: dict[str, Any], parts: list[Part]) -> dict[str, Any]:
    """The plan as stored (JSON-normalised, so it compares equal to what is read back)."""
    return json.loads(json.dumps({"settings": settings, "parts": [p.fingerprint() for p in parts]}))


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
