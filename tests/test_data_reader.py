"""LatentDataset: training samples drawn from stored posteriors, with noise and flips that depend
only on (seed, sample index, epoch) — across workers, epochs, mid-epoch resume and rank counts.

The dataset here is written with write_mds_dataset (not by encode.py): sample i stores mean i
for the image, i + 0.5 for its flip, and std 2**-7, so a drawn x reveals its flip and its eps.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from streaming import StreamingDataLoader

from dig_scale.data import DatasetMetadata, LatentDataset, read_metadata, sample_generator
from dig_scale.data.mds_writer import write_mds_dataset

N, SHAPE, SCALE, STD = 48, (4, 4, 4), 0.5, 2.0**-7


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("latents") / "ds"
    meta = DatasetMetadata(kind="latent", sample_shape=SHAPE, resolution=32, num_samples=N, num_classes=3,
                           class_counts=[N // 3] * 3, class_names=None, vae="test", scaling_factor=SCALE,
                           shift_factor=0.0, latent_mean=[0.0] * 4, latent_std=[1.0] * 4, preprocessing={},
                           source={"type": "test"})
    samples = ({"mean": np.stack([np.full(SHAPE, i), np.full(SHAPE, i + 0.5)]).astype(np.float16),
                "std": np.full((2, *SHAPE), STD, np.float16), "label": np.int64(i % 3), "key": f"sample{i}"}
               for i in range(N))
    write_mds_dataset(str(path), meta, samples, size_limit=4096)
    return path


def decompose(x: torch.Tensor, index: int) -> tuple[int, np.ndarray]:
    """(flip, eps) of a sample x = SCALE * (index + flip / 2 + STD * eps)."""
    unscaled = x.double().numpy() / SCALE - index
    flip = int(round(unscaled.mean() * 2))
    return flip, (unscaled - flip / 2) / STD


def expected_x(seed: int, index: int, epoch: int) -> torch.Tensor:
    """The documented draw: flip = integers(2), then float32 standard normals, from sample_generator."""
    rng = sample_generator(seed, index, epoch)
    flip = int(rng.integers(2))
    eps = rng.standard_normal(SHAPE, dtype=np.float32)
    return torch.from_numpy(SCALE * (index + flip / 2 + np.float32(STD) * eps))


def draws(path: Path, epochs: int = 2, num_workers: int = 0, persistent: bool = True, seed: int = 0,
          **kwargs) -> dict:
    """{(epoch, index): x} from iterating a StreamingDataLoader for `epochs` epochs."""
    dataset = LatentDataset(str(path), batch_size=4, seed=seed, **kwargs)
    loader = StreamingDataLoader(dataset, batch_size=4, num_workers=num_workers,
                                 persistent_workers=num_workers > 0 and persistent)
    out = {}
    for epoch in range(epochs):
        for batch in loader:
            for x, index, y in zip(batch["x"], batch["index"].tolist(), batch["y"].tolist()):
                assert y == index % 3
                out[epoch, index] = x
    return out


def test_samples_are_scaled_posterior_draws_with_random_flips(dataset_dir):
    got = draws(dataset_dir, epochs=1)
    assert sorted(i for _, i in got) == list(range(N))
    flips, eps = zip(*(decompose(x, i) for (_, i), x in got.items()))
    eps = np.concatenate([e.ravel() for e in eps])
    assert abs(eps.mean()) < 0.1 and abs(eps.std() - 1) < 0.1  # standard normal noise
    assert 0.25 < np.mean(flips) < 0.75
    assert all(got[0, i].dtype == torch.float32 and got[0, i].shape == SHAPE for i in range(N))


def test_noise_depends_only_on_seed_index_and_epoch(dataset_dir):
    reference = draws(dataset_dir)
    for num_workers, persistent in ((2, True), (2, False)):
        other = draws(dataset_dir, num_workers=num_workers, persistent=persistent)
        assert other.keys() == reference.keys()
        assert all(torch.equal(other[k], reference[k]) for k in reference), (num_workers, persistent)
    for (epoch, index), x in reference.items():  # keyed by (seed, index, epoch) as documented
        torch.testing.assert_close(x, expected_x(0, index, epoch), rtol=0, atol=1e-5)
    for i in range(N):  # a new epoch draws new noise
        assert not torch.allclose(reference[0, i], reference[1, i])
    reseeded = draws(dataset_dir, epochs=1, seed=1)
    assert not any(torch.allclose(reseeded[0, i], reference[0, i]) for i in range(N))
    random_access = LatentDataset(str(dataset_dir), batch_size=4)
    assert torch.equal(random_access[5]["x"], reference[0, 5])  # outside iteration: epoch 0


def test_random_flip_can_be_turned_off(dataset_dir):
    assert {decompose(x, i)[0] for (_, i), x in draws(dataset_dir, epochs=1, random_flip=False).items()} == {0}


def test_mid_epoch_resume_through_loader_state_draws_the_same_samples(dataset_dir):
    dataset = LatentDataset(str(dataset_dir), batch_size=4, seed=3)
    loader = StreamingDataLoader(dataset, batch_size=4, num_workers=2)
    for _ in loader:  # epoch 0
        pass
    state, rest = None, []
    for step, batch in enumerate(loader):  # epoch 1: the state after 6 batches, then what came after
        if step == 5:
            state = loader.state_dict()
        if step > 5:
            rest += list(zip(batch["index"].tolist(), batch["x"]))
    assert state["epoch"] == 1 and state["sample_in_epoch"] == 24
    del loader, dataset

    resumed_dataset = LatentDataset(str(dataset_dir), batch_size=4, seed=3)
    resumed = StreamingDataLoader(resumed_dataset, batch_size=4, num_workers=2)
    resumed.load_state_dict(state)
    got = [(i, x) for batch in resumed for i, x in zip(batch["index"].tolist(), batch["x"])]
    assert [i for i, _ in got] == [i for i, _ in rest]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, rest))
    for index, x in got:  # and it is epoch 1's draw, not a replay of epoch 0's
        torch.testing.assert_close(x, expected_x(3, index, epoch=1), rtol=0, atol=1e-5)


RANK_SCRIPT = """
import json, sys, hashlib
from streaming import StreamingDataLoader
from dig_scale.data import LatentDataset
ds = LatentDataset(sys.argv[1], batch_size=4, seed=0)
loader = StreamingDataLoader(ds, batch_size=4, num_workers=1)
seen = {}
for epoch in range(2):
    for batch in loader:
        for i, x in zip(batch["index"].tolist(), batch["x"]):
            seen[f"{epoch}/{i}"] = x.numpy().tobytes().hex()
rank = __import__("os").environ["RANK"]
json.dump(seen, open(f"{sys.argv[2]}/rank{rank}.json", "w"))
"""


def test_two_ranks_draw_what_one_rank_draws(dataset_dir, tmp_path):
    (tmp_path / "read.py").write_text(RANK_SCRIPT)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(tmp_path / "read.py"), str(dataset_dir), str(tmp_path)],
                            capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert not ranks[0].keys() & ranks[1].keys()  # disjoint shares of each epoch
    single = draws(dataset_dir)
    combined = {**ranks[0], **ranks[1]}
    assert combined.keys() == {f"{e}/{i}" for e, i in single}
    assert all(bytes.fromhex(combined[f"{e}/{i}"]) == x.numpy().tobytes() for (e, i), x in single.items())


def test_metadata_reads_without_the_dataset_and_missing_data_is_named(dataset_dir, tmp_path):
    meta = read_metadata(str(dataset_dir))
    assert meta.sample_shape == SHAPE and meta.num_samples == N and meta.scaling_factor == SCALE
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nothing")):
        read_metadata(str(tmp_path / "nothing"))
