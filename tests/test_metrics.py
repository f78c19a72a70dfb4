"""Fréchet distance against closed forms; the Inception pipeline (torch-fidelity, random weights)
and `python -m dig_scale.evaluate` end to end; the digits demo's judge on real digits."""
import json
import math

import numpy as np
import pytest
import torch
from sampling_fixtures import one_thread  # noqa: F401 (autouse fixture)

from dig_scale import evaluate
from dig_scale.data.demo import digit_images
from dig_scale.metrics.digits import DigitClassifier
from dig_scale.metrics.frechet import frechet_distance, gaussian_statistics
from dig_scale.metrics.inception import InceptionFeatures, load_inception
from dig_scale.sampling.npz import write_sample_npz


def random_spd(d, rank=None, seed=0):
    a = np.random.default_rng(seed).normal(size=(d, rank or d))
    return a @ a.T / (rank or d)


def test_frechet_distance_of_commuting_covariances():
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1 + 4 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("singular", [False, True])
def test_frechet_distance_of_non_commuting_2x2_covariances(singular):
    """For 2x2 M with non-negative eigenvalues, tr M^1/2 = sqrt(tr M + 2 sqrt(det M)); with
    M = S1 S2, det M = det S1 det S2 (0 when S1 is singular: a degenerate Gaussian on a line)."""
    s1 = np.array([[1.0, 1.0], [1.0, 1.0]]) if singular else np.array([[2.0, 0.5], [0.5, 1.0]])
    s2 = np.array([[1.0, -0.3], [-0.3, 0.5]])
    trace_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = 0.25 + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    assert frechet_distance(np.zeros(2), s1, np.array([0.5, 0.0]), s2) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_of_rank_deficient_covariances():
    """S estimated from 20 samples in 64 dimensions (rank 19): d(S, c^2 S) = tr(S) (1 - c)^2,
    and 0 against itself, where sqrtm of a singular product needs an eps offset."""
    s = random_spd(64, rank=19)
    mu = np.zeros(64)
    assert frechet_distance(mu, s, mu, s) < 1e-10 * np.trace(s)
    assert frechet_distance(mu, s, mu, 2.25 * s) == pytest.approx(np.trace(s) * 0.25, rel=1e-9)


def test_frechet_distance_refuses_bad_statistics():
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.zeros(2), np.full((2, 2), np.nan), np.zeros(2), np.eye(2))


def test_gaussian_statistics_match_numpy_in_float64_despite_offsets():
    x = (1e4 + np.random.default_rng(0).normal(size=(1000, 5))).astype(np.float32)
    mean, covariance = gaussian_statistics(torch.from_numpy(x), chunk=128)
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(covariance, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory):
    """torch-fidelity's InceptionV3 with its random initialisation (the real weights cannot be
    downloaded here), saved as a weight file of the real one's layout."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class RandomInception(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None  # keep the random initialisation

    directory = tmp_path_factory.mktemp("inception")
    torch.save({}, directory / "empty.pth")
    torch.manual_seed(0)
    model = RandomInception("random", ["2048"], feature_extractor_weights_path=str(directory / "empty.pth"))
    torch.save(model.state_dict(), directory / "random-inception.pth")
    return directory / "random-inception.pth"


def images(count, seed, size=32):
    return np.random.default_rng(seed).integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)


def test_inception_features_have_adms_shapes(random_inception_weights):
    inception = InceptionFeatures(random_inception_weights, torch.device("cpu"))
    batch = images(3, 0)
    features = inception([batch[:2], batch[2:]])
    assert {k: tuple(v.shape) for k, v in features.items()} == {"pool": (3, 2048), "logits": (3, 1008),
                                                                "spatial": (3, 17 * 17 * 7)}
    again = inception([batch])
    for name in features:
        torch.testing.assert_close(again[name], features[name], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(features["pool"][0], features["pool"][1])


class Payload:
    """Not a tensor: unpickling it would mean running code chosen by whoever wrote the file."""


def test_inception_weights_are_never_unpickled(tmp_path):
    torch.save({"fc.weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="not a file of tensors torch can load safely"):
        load_inception(tmp_path / "evil.pth", torch.device("cpu"))
    torch.save({"fc.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not the InceptionV3 weights"):
        load_inception(tmp_path / "other.pth", torch.device("cpu"))
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05"):
        load_inception(tmp_path / "missing.pth", torch.device("cpu"))


def test_evaluate_against_images_and_against_precomputed_statistics(random_inception_weights, tmp_path):
    samples, ref, ref_stats = tmp_path / "samples.npz", tmp_path / "ref.npz", tmp_path / "ref_stats.npz"
    write_sample_npz(samples, [images(5, 1)], 5, np.arange(5))
    write_sample_npz(ref, [images(2, 2), images(3, 3)], 5, None)
    weights = ["--inception-weights", str(random_inception_weights)]
    assert evaluate.main([str(samples), "--ref", str(ref), *weights]) == 0
    metrics = json.loads((tmp_path / "samples.metrics.json").read_text())
    assert metrics["num_samples"] == 5 and metrics["fid"] > 0 and metrics["sfid"] > 0
    assert 1 - 1e-9 <= metrics["inception_score"] <= 1008
    assert 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1

    # A batch against itself: FID 0, every sample within reach; its statistics saved on the way ...
    assert evaluate.main([str(ref), "--ref", str(ref), *weights, "--save-stats", str(ref_stats),
                          "--out", str(tmp_path / "self.json")]) == 0
    itself = json.loads((tmp_path / "self.json").read_text())
    assert itself["fid"] < 1e-6 and itself["precision"] == itself["recall"] == 1.0
    # ... give the same FID as its images (and no precision/recall: that needs the images).
    assert evaluate.main([str(samples), "--ref", str(ref_stats), *weights, "--out", str(tmp_path / "stats.json")]) == 0
    from_stats = json.loads((tmp_path / "stats.json").read_text())
    assert from_stats["fid"] == pytest.approx(metrics["fid"], rel=1e-6) and "precision" not in from_stats


def test_evaluate_never_overwrites_without_being_asked(tmp_path):
    samples = tmp_path / "samples.npz"
    write_sample_npz(samples, [images(2, 0, size=8)], 2, np.array([1, 2]))
    (tmp_path / "samples.metrics.json").write_text("keep")
    with pytest.raises(SystemExit):
        evaluate.main([str(samples), "--digits"])
    assert (tmp_path / "samples.metrics.json").read_text() == "keep"


@pytest.fixture(scope="module")
def judge():
    return DigitClassifier(resolution=8)


def as_samples(pixels_nchw):
    return np.ascontiguousarray(pixels_nchw.transpose(0, 2, 3, 1))


def test_the_digits_judge_recognises_real_digits(judge):
    pixels, labels = digit_images(8)
    real = judge.evaluate(as_samples(pixels), labels)
    assert judge.held_out_accuracy > 0.93 and real["accuracy"] > 0.95
    assert real["frechet_distance"] < 2 * real["real_frechet_distance"] + 1e-3
    shuffled = judge.evaluate(as_samples(pixels), np.random.default_rng(0).permutation(labels))
    assert shuffled["accuracy"] < 0.2
    noise = judge.evaluate(images(500, 0, size=8), labels[:500])
    assert noise["frechet_distance"] > 10 * real["frechet_distance"]
