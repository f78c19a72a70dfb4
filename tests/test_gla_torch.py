"""The GLA op on its `torch` backend against the float64 step-by-step recurrence (kernels.gla.naive)."""
import pytest
import torch
from gla_testing import outputs_and_grads, random_gla_inputs, rel_err

from kernels.gla import ScanOrder, chunk_gla, chunk_length, from_scan_order, scan_gla, to_scan_order
from kernels.gla.naive import naive_gla, physical_scan_index, recurrent_gla
from kernels.gla.torch_chunked import CHUNK


def assert_matches(fn, reference, inputs, out_tol, grad_tol):
    out, grads = outputs_and_grads(fn, inputs)
    ref, ref_grads = outputs_and_grads(reference, [x.double() for x in inputs])
    assert out.dtype == inputs[2].dtype
    assert rel_err(out, ref) < out_tol
    for i, (a, b) in enumerate(zip(grads, ref_grads)):
        assert a.dtype == inputs[i].dtype
        assert rel_err(a, b) < grad_tol, f"gradient of input {i}"


@pytest.mark.parametrize("T", [1, 7, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK - 5])
@pytest.mark.parametrize("H", [1, 3])
def test_forward_and_gradients_match_recurrence(T, H):
    inputs = random_gla_inputs(2, T, H, 8, 12, seed=T * 10 + H)
    assert_matches(lambda *x: chunk_gla(*x, backend="torch"), recurrent_gla, inputs, 1e-12, 1e-10)


def test_float32_accuracy_and_dtype():
    inputs = random_gla_inputs(2, 3 * CHUNK + 3, 2, 16, 32, dtype=torch.float32)
    assert_matches(lambda *x: chunk_gla(*x, backend="torch"), recurrent_gla, inputs, 1e-5, 1e-4)


def test_bfloat16_inputs_accumulate_in_fp32():
    inputs = random_gla_inputs(1, 2 * CHUNK + 9, 2, 16, 32, dtype=torch.bfloat16)
    out = chunk_gla(*inputs, backend="torch")
    assert out.dtype == torch.bfloat16
    assert rel_err(out, recurrent_gla(*inputs)) < 1e-2


def test_autocast_around_the_call_changes_nothing():
    """The op's forward runs inside the caller's autocast region, its backward outside it (as
    `loss.backward()` after `with torch.autocast(...)`): the backend's products keep its own
    precision, so forward and gradients equal those of the same call without autocast."""
    inputs = random_gla_inputs(1, 2 * CHUNK + 9, 2, 16, 32, dtype=torch.float32)
    plain, plain_grads = outputs_and_grads(lambda *x: chunk_gla(*x, backend="torch"), inputs)

    def under_autocast(*x):
        with torch.autocast("cpu", torch.bfloat16):
            return chunk_gla(*x, backend="torch")

    out, grads = outputs_and_grads(under_autocast, inputs)
    assert out.dtype == torch.float32
    assert torch.equal(out, plain)
    assert all(torch.equal(a, b) for a, b in zip(grads, plain_grads))


@pytest.mark.parametrize("gate_floor", [-0.5, -4.0, -20.0])
def test_mild_and_strong_decay_match_recurrence_in_fp32(gate_floor):
    # Per-step gates down to gate_floor: up to 640 of cumulative decay inside one chunk, far past
    # float32's exp range: every exponent must stay <= 0.
    inputs = random_gla_inputs(1, 2 * CHUNK + 3, 2, 8, 8, dtype=torch.float32, gate_floor=gate_floor)
    assert_matches(lambda *x: chunk_gla(*x, backend="torch"), recurrent_gla, inputs, 1e-5, 1e-4)


def test_explicit_scale():
    inputs = random_gla_inputs(1, 40, 2, 8, 8)
    assert rel_err(chunk_gla(*inputs, scale=0.37), recurrent_gla(*inputs, scale=0.37)) < 1e-12


@pytest.mark.parametrize("order", list(ScanOrder))
@pytest.mark.parametrize("grid", [(5, 7), (6, 6), (9, 4)])
def test_scan_orders_match_recurrence_on_physically_reordered_tokens(order, grid):
    inputs = random_gla_inputs(2, grid[0] * grid[1], 2, 8, 8, seed=int(order) + 7 * grid[0])
    assert_matches(lambda *x: scan_gla(*x, order, grid, backend="torch"), lambda *x: naive_gla(*x, order, grid),
                   inputs, 1e-12, 1e-10)


@pytest.mark.parametrize("raw_gate", [False, True])
def test_gate_activation_and_gated_rms_norm(raw_gate):
    q, k, v, g = random_gla_inputs(2, 45, 2, 8, 12, seed=3)
    gen = torch.Generator().manual_seed(4)
    if raw_gate:
        g = torch.randn(g.shape, generator=gen, dtype=torch.float64) * 4.0
    gate = torch.randn(v.shape, generator=gen, dtype=torch.float64)
    weight = 1.0 + 0.5 * torch.randn(v.shape[-1], generator=gen, dtype=torch.float64)
    options = {"gate_logit_normalizer": 16.0 if raw_gate else None, "norm_eps": 1e-5}
    order, grid = ScanOrder.COL_REVERSE, (5, 9)
    assert_matches(lambda q, k, v, g, z, w: scan_gla(q, k, v, g, order, grid, backend="torch", output_gate=z,
                                                     norm_weight=w, **options),
                   lambda q, k, v, g, z, w: naive_gla(q, k, v, g, order, grid, output_gate=z, norm_weight=w, **options),
                   (q, k, v, g, gate, weight), 1e-12, 1e-10)


@pytest.mark.parametrize("order", list(ScanOrder))
def test_scan_order_helpers_are_inverse_permutations(order):
    x = torch.arange(4 * 6).view(1, 24, 1)
    scanned = to_scan_order(x, order, 4, 6)
    assert scanned.view(-1).tolist() == physical_scan_index(int(order), 4, 6).tolist()
    assert torch.equal(from_scan_order(scanned, order, 4, 6), x)


def test_chunk_length():
    assert chunk_length("torch", 5) == 8 and chunk_length("torch", 1000) == CHUNK
    with pytest.raises(ValueError, match="unknown GLA backend"):
        chunk_length("nope", 10)


def test_shape_errors_are_clear():
    q, k, v, g = random_gla_inputs(1, 12, 2, 8, 8)
    with pytest.raises(ValueError, match="does not match the grid"):
        scan_gla(q, k, v, g, ScanOrder.ROW_FORWARD, (5, 5))
    with pytest.raises(ValueError, match="same shape"):
        chunk_gla(q, k[:, :, :1], v, g)
    with pytest.raises(ValueError, match="unknown GLA backend"):
        chunk_gla(q, k, v, g, backend="nope")
    with pytest.raises(ValueError, match="go together"):
        scan_gla(q, k, v, g, ScanOrder.ROW_FORWARD, (1, 12), output_gate=v)
    with pytest.raises(ValueError, match="must be positive"):
        scan_gla(q, k, v, g, ScanOrder.ROW_FORWARD, (1, 12), gate_logit_normalizer=0.0)


def test_differentiating_a_forward_that_kept_nothing_says_so():
    q, k, v, g = (x.requires_grad_() for x in random_gla_inputs(1, 12, 2, 8, 8))
    out, _, _ = torch.ops.dig_kernels.gla(q, k, v, g, torch.randn_like(v), torch.ones(8, dtype=torch.float64),
                                          0.3, 0.0, 1e-6, 0, 3, 4, "torch", False)
    with pytest.raises(RuntimeError, match="save=True"):
        out.sum().backward()


def test_states_and_norm_input_are_handed_over_not_differentiated():
    q, k, v, g = (x.requires_grad_() for x in random_gla_inputs(1, 12, 2, 8, 8))
    gate, weight = torch.randn_like(v, requires_grad=True), torch.ones(8, dtype=torch.float64, requires_grad=True)
    out, states, o_pre = torch.ops.dig_kernels.gla(q, k, v, g, gate, weight, 0.3, 4.0, 1e-6, 0, 3, 4, "torch", True)
    assert out.requires_grad and not states.requires_grad and not o_pre.requires_grad
    out.sum().backward()  # the backward is handed no gradient for them (None, not zero-filled tensors)
    assert all(x.grad is not None for x in (q, k, v, g, gate, weight))


def test_op_compiles_as_one_node_and_passes_opcheck():
    q, k, v, g = (x.float().requires_grad_() for x in random_gla_inputs(1, 20, 2, 8, 8))
    gate, weight = torch.randn_like(v, requires_grad=True), torch.ones(8, requires_grad=True)

    def fn(q, k, v, g, gate, weight):
        return scan_gla(q, k, v, g, ScanOrder.COL_REVERSE, (4, 5), backend="torch", gate_logit_normalizer=4.0,
                        output_gate=gate, norm_weight=weight)

    out = torch.compile(fn, backend="aot_eager", fullgraph=True)(q, k, v, g, gate, weight)
    out.sum().backward()
    assert torch.allclose(out, fn(q, k, v, g, gate, weight))
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in (q, k, v, g, gate, weight))
    for args in ((q, k, v, g, gate, weight, 0.3, 4.0, 1e-6, 3, 4, 5, "torch", True),
                 (q, k, v, g, None, None, 0.3, 0.0, 1e-6, 1, 4, 5, "torch", True)):
        torch.library.opcheck(torch.ops.dig_kernels.gla.default, args)
