"""A checkpoint written at another world size, converted once to DeepSpeed's universal format,
which any world size loads with its optimizer state. DeepSpeed's converter loads every file with
`weights_only=False`, so it runs in a process of its own with only safe loads allowed:

    python -m dig_scale.checkpoint.universal CHECKPOINT_DIR OUTPUT_DIR
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .layout import UNIVERSAL_SUFFIX, CheckpointError, is_complete
from .manifest import digests, files_in, verify_checkpoint, write_manifest
from .retention import delete
from .safe_load import FORCE_WEIGHTS_ONLY, refuse_unsafe_types


def convert_to_universal(checkpoint: Path) -> Path:
    """The universal form of `checkpoint` (a verified checkpoint), converted unless a complete
    conversion is there; beside it, named <tag>-universal. Rank 0 only."""
    target = checkpoint.with_name(checkpoint.name + UNIVERSAL_SUFFIX)
    if is_complete(target):
        verify_checkpoint(target)
        return target
    delete([target])
    refuse_unsafe_types(checkpoint)
    print(f"converting {checkpoint} to DeepSpeed's universal format for the new world size", file=sys.stderr,
          flush=True)
    result = subprocess.run([sys.executable, "-m", __spec__.name, str(checkpoint), str(target)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    (checkpoint.parent / "latest_universal").unlink(missing_ok=True)  # the converter's own pointer; unused
    if result.returncode != 0:
        raise CheckpointError(f"converting {checkpoint} to the universal format failed:\n{result.stderr[-3000:]}")
    write_manifest(target, digests(target, files_in(target)))
    return target


def main(argv: list[str]) -> int:
    source, target = argv
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    import torch
    from deepspeed.checkpoint import ds_to_universal

    from .safe_load import deepspeed_checkpoint_types

    torch.serialization.add_safe_globals(deepspeed_checkpoint_types())
    sys.argv = ["ds_to_universal", "--input_folder", source, "--output_folder", target, "--inject_missing_state"]
    ds_to_universal.main(ds_to_universal.parse_arguments())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
