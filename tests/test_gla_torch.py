"""The `torch` GLA backend against the float64 step-by-step recurrence."""
import pytest
import torch
from gla_reference import physical_scan_index, random_gla_inputs, recurrent_gla

from kernels.gla import ScanOrder, chunk_gla, from_scan_order, scan_gla, to_scan_order
from kernels.gla.torch_chunked import CHUNK


def rel_err(a, b):
    """||a - b|| / ||b||; the floor keeps exactly-zero references (dg at T=1) meaningful."""
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-3)).item()


def grads(fn, inputs, weight):
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*inputs)
    return out, torch.autograd.grad((out.double() * weight).sum(), inputs)


@pytest.mark.parametrize("T", [1, 7, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK - 5])
@pytest.mark.parametrize("H", [1, 3])
def test_forward_and_gradients_match_recurrence(T, H):
    inputs = random_gla_inputs(2, T, H, 8, 12, seed=T * 10 + H)
    weight = torch.randn(2, T, H, 12, dtype=torch.float64)
    out, got = grads(lambda *x: chunk_gla(*x, backend="torch"), inputs, weight)
    ref, want = grads(recurrent_gla, inputs, weight)
    assert rel_err(out, ref) < 1e-12
    for name, a, b in zip("qkvg", got, want):
        assert rel_err(a, b) < 1e-10, name


def test_float32_accuracy_and_dtype():
    inputs = random_gla_inputs(2, 3 * CHUNK + 3, 2, 16, 32, dtype=torch.float32)
    weight = torch.randn(2, 3 * CHUNK + 3, 2, 32, dtype=torch.float64)
    out, got = grads(lambda *x: chunk_gla(*x, backend="torch"), inputs, weight)
    ref, want = grads(recurrent_gla, inputs, weight)
    assert out.dtype == torch.float32
    assert rel_err(out, ref) < 1e-5
    for name, a, b in zip("qkvg", got, want):
        assert a.dtype == torch.float32
        assert rel_err(a, b) < 1e-4, name


def test_bfloat16_inputs_accumulate_in_fp32():
    inputs = random_gla_inputs(1, 2 * CHUNK + 9, 2, 16, 32, dtype=torch.bfloat16)
    out = chunk_gla(*inputs, backend="torch")
    assert out.dtype == torch.bfloat16
    assert rel_err(out, recurrent_gla(*inputs)) < 1e-2


def test_strong_decay_stays_finite_and_exact():
    # Gates down to -20 per step: cumulative decay over a chunk is far below fp32's exp range.
    inputs = random_gla_inputs(1, 2 * CHUNK + 5, 2, 8, 8, dtype=torch.float32, gate_floor=-20.0)
    weight = torch.randn(1, 2 * CHUNK + 5, 2, 8, dtype=torch.float64)
    out, got = grads(lambda *x: chunk_gla(*x, backend="torch"), inputs, weight)
    ref, want = grads(recurrent_gla, inputs, weight)
    assert torch.isfinite(out).all() and all(torch.isfinite(x).all() for x in got)
    assert rel_err(out, ref) < 1e-5
    for name, a, b in zip("qkvg", got, want):
        assert rel_err(a, b) < 1e-4, name


@pytest.mark.parametrize("gate_floor", [-0.5, -4.0, -20.0])
def test_mild_and_strong_decay_match_recurrence_in_fp32(gate_floor):
    # Per-step gates down to gate_floor: up to 640 of cumulative decay inside one chunk.
    inputs = random_gla_inputs(1, 2 * CHUNK + 3, 2, 8, 8, dtype=torch.float32, gate_floor=gate_floor)
    weight = torch.randn(1, 2 * CHUNK + 3, 2, 8, dtype=torch.float64)
    out, got = grads(lambda *x: chunk_gla(*x, backend="torch"), inputs, weight)
    ref, want = grads(recurrent_gla, inputs, weight)
    assert rel_err(out, ref) < 1e-5
    for name, a, b in zip("qkvg", got, want):
        assert rel_err(a, b) < 1e-4, name


def test_explicit_scale():
    inputs = random_gla_inputs(1, 40, 2, 8, 8)
    assert rel_err(chunk_gla(*inputs, scale=0.37), recurrent_gla(*inputs, scale=0.37)) < 1e-12


@pytest.mark.parametrize("order", list(ScanOrder))
@pytest.mark.parametrize("grid", [(5, 7), (6, 6), (9, 4)])
def test_scan_orders_match_recurrence_on_physically_reordered_tokens(order, grid):
    height, width = grid
    T = height * width
    inputs = random_gla_inputs(2, T, 2, 8, 8, seed=int(order) + 7 * height)
    weight = torch.randn(2, T, 2, 8, dtype=torch.float64)
    index = physical_scan_index(int(order), height, width)

    def physical(q, k, v, g):
        o_scan = recurrent_gla(*(x[:, index] for x in (q, k, v, g)))
        o = torch.empty_like(o_scan)
        o[:, index] = o_scan
        return o

    out, got = grads(lambda *x: scan_gla(*x, order, grid, backend="torch"), inputs, weight)
    ref, want = grads(physical, inputs, weight)
    assert rel_err(out, ref) < 1e-12
    for name, a, b in zip("qkvg", got, want):
        assert rel_err(a, b) < 1e-10, name


@pytest.mark.parametrize("order", list(ScanOrder))
def test_scan_order_helpers_are_inverse_permutations(order):
    x = torch.arange(4 * 6).view(1, 24, 1)
    scanned = to_scan_order(x, order, 4, 6)
    assert scanned.view(-1).tolist() == physical_scan_index(int(order), 4, 6).tolist()
    assert torch.equal(from_scan_order(scanned, order, 4, 6), x)


def test_shape_errors_are_clear():
    q, k, v, g = random_gla_inputs(1, 12, 2, 8, 8)
    with pytest.raises(ValueError, match="does not match the grid"):
        scan_gla(q, k, v, g, ScanOrder.ROW_FORWARD, (5, 5))
    with pytest.raises(ValueError, match="same shape"):
        chunk_gla(q, k[:, :, :1], v, g)
    with pytest.raises(ValueError, match="unknown GLA backend"):
        chunk_gla(q, k, v, g, backend="nope")


def test_custom_op_compiles_without_graph_break():
    inputs = [x.float().requires_grad_() for x in random_gla_inputs(1, 20, 2, 8, 8)]
    fn = lambda *x: scan_gla(*x, ScanOrder.COL_REVERSE, (4, 5))
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    out = compiled(*inputs)
    out.sum().backward()
    expected = scan_gla(*[x.detach() for x in inputs], ScanOrder.COL_REVERSE, (4, 5))
    assert torch.allclose(out, expected)
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in inputs)
