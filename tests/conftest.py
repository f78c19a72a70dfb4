import os
import sys
from pathlib import Path

import pytest
import torch

# Test helpers (gla_testing.py, ...) import as top-level modules.
sys.path.insert(0, str(Path(__file__).parent))

# Without a GPU, Triton kernels run through Triton's interpreter on CPU tensors (tests/test_gla_triton.py).
# Triton reads this when a kernel is defined, so it must be set before `kernels` is first imported;
# it changes nothing else: on CPU every GLA caller still gets the torch backend unless it asks for "triton".
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
    """A 2-rank, bf16 training run of 6 steps with checkpoints at 3 and 6, recording the sample
    indices of every step: the reference that resumed and damaged runs are compared with."""
    from engine_runs import assert_ok, launch, write_config

    directory = tmp_path_factory.mktemp("uninterrupted")
    config = write_config(directory)
    assert_ok(launch(config, harness=("--record", str(directory / "record"))))
    return config, directory / "record"


@pytest.fixture(autouse=True)
def environment_restored():
    """Some tests run our entry points in this process, and init_distributed sets RANK, WORLD_SIZE
    and LOCAL_RANK as launchers do: restored after every test, so that no later test's subprocess
    (a trainer, an sbatch job) inherits them."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
