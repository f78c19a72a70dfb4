"""Join the finished parts into one dataset: a single MDS index over every part's shards, then the
metadata file (written last: its presence is what marks the dataset finished).

Everything comes from the plan and the part manifests in the output, so whichever rank finishes
last can do it, and doing it again (a rerun of a finished output) only rewrites the same index.
"""
from __future__ import annotations

import copy
import json
from collections import Counter
from typing import Any

from dig_scale.data.channel_stats import ChannelMoments
from dig_scale.data.schema import INDEX_FILENAME, METADATA_FILENAME, DatasetMetadata, tool_info, utc_timestamp

from .errors import EncodeError
from .output_store import OutputStore
from .sources import Part

_SHARD_FILE_KEYS = ("raw_data", "zip_data", "raw_meta", "zip_meta")


def merged_index(parts: list[Part], manifests: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """An MDS index (version 2) listing every part's shards, with paths relative to the output root."""
    shards = []
    for part in parts:
        for shard in manifests[part.index]["index"]["shards"]:
            shard = copy.deepcopy(shard)
            for key in _SHARD_FILE_KEYS:
                if shard.get(key):
                    shard[key]["basename"] = f"{part.name}/{shard[key]['basename']}"
            shards.append(shard)
    return {"version": 2, "shards": shards}


def merge_dataset(store: OutputStore, plan: dict[str, Any], parts: list[Part],
                  manifests: dict[int, dict[str, Any]]) -> DatasetMetadata:
    """Write the dataset's index and metadata from the finished parts; returns the metadata."""
    settings = plan["settings"]
    labels: Counter = Counter()
    moments = ChannelMoments()
    rejects: list[dict[str, str]] = []
    for part in parts:
        manifest = manifests[part.index]
        labels.update({int(k): v for k, v in manifest["label_counts"].items()})
        moments.merge(ChannelMoments(**manifest["moments"]))
        rejects += manifest["rejects"]
    total = sum(labels.values())
    if total == 0:
        raise EncodeError(f"--input {settings['source']['input']}: none of its inputs could be used "
                          f"({len(rejects)} rejected, e.g. {rejects[:1]}); expected decodable images")
    num_classes = settings["num_classes"] or max(labels) + 1
    store.write_text(INDEX_FILENAME, json.dumps(merged_index(parts, manifests), sort_keys=True))
    metadata = DatasetMetadata(
        kind=settings["kind"], sample_shape=tuple(settings["sample_shape"]), resolution=settings["resolution"],
        num_samples=total, num_classes=num_classes, class_counts=[labels.get(c, 0) for c in range(num_classes)],
        class_names=settings["source"].get("class_names"), vae=settings["vae"],
        scaling_factor=settings["scaling_factor"], shift_factor=settings["shift_factor"],
        latent_mean=moments.mean(), latent_std=moments.std(), preprocessing=settings["preprocessing"],
        source={k: v for k, v in settings["source"].items() if k != "class_names"},
        vae_subfolder=settings["vae_subfolder"], rejects=rejects, tool=tool_info("data_prep/encode.py"),
        created=utc_timestamp())
    store.write_text(METADATA_FILENAME, metadata.to_json())
    return metadata
