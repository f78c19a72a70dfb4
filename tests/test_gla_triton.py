"""The GLA op on its `triton` backend against the float64 step-by-step recurrence.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (conftest.py sets
TRITON_INTERPRET=1), which multiplies bfloat16/tf32 operands after rounding them exactly as the
GPU does, so the bfloat16 accuracy bar is checked here too; with a GPU the same tests run
compiled, and the GPU-only tests below add real DiG sizes.
"""
import os

import pytest
import torch
from gla_testing import outputs_and_grads, random_gla_inputs, rel_err

triton = pytest.importorskip("triton")
CUDA = torch.cuda.is_available()
if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and Triton's interpreter is off", allow_module_level=True)

from kernels.gla import ScanOrder, chunk_gla, chunk_length, scan_gla  # noqa: E402
from kernels.gla.naive import naive_gla, recurrent_gla  # noqa: E402
from kernels.gla.triton_scan import SCAN_BLOCK, SHORT_SCAN, scan_states  # noqa: E402
from kernels.gla.triton_tiles import CHUNK  # noqa: E402

DEVICE = torch.device("cuda" if CUDA else "cpu")
gpu_only = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


def assert_matches(fn, reference, inputs, tol):
    out, grads = outputs_and_grads(fn, [x.to(DEVICE) for x in inputs])
    ref, ref_grads = outputs_and_grads(reference, [x.double() for x in inputs])
    assert out.dtype == inputs[2].dtype
    assert torch.isfinite(out).all() and all(torch.isfinite(x).all() for x in grads)
    assert rel_err(out.cpu(), ref) <= tol, "output"
    for i, (a, b) in enumerate(zip(grads, ref_grads)):
        assert a.dtype == inputs[i].dtype
        assert rel_err(a.cpu(), b) <= tol, f"gradient of input {i}"


def gla_inputs(B, T, H, dtype=torch.float32, gate_floor=None, seed=0, K=32, V=64):
    """Gates down to `gate_floor`, or mild ones that keep every chunk on the fast path (the exact
    path's own tests choose strong gates; it is slow in the interpreter)."""
    q, k, v, g = random_gla_inputs(B, T, H, K, V, dtype=dtype, gate_floor=gate_floor, seed=seed)
    return q, k, v, g if gate_floor is not None else g / 4


def torch_float64(q, k, v, g, order, grid, **options):
    """Reference where the step loop is too slow: the torch backend in float64 (itself checked
    against the recurrence to 1e-10 in test_gla_torch.py)."""
    return scan_gla(*(x.double() for x in (q, k, v, g)), order, grid, backend="torch", **options)


@pytest.mark.parametrize("order, grid", [(order, (12, 12)) for order in ScanOrder]
                         + [(ScanOrder.ROW_REVERSE, (1, 150)), (ScanOrder.COL_FORWARD, (9, 15))])
def test_scan_orders_forward_and_gradients(order, grid):
    inputs = gla_inputs(1, grid[0] * grid[1], 2, seed=int(order) + grid[0])
    assert_matches(lambda *x: scan_gla(*x, order, grid, backend="triton"), lambda *x: naive_gla(*x, order, grid),
                   inputs, tol=1e-5)


@pytest.mark.parametrize("T", [1, 40, CHUNK, CHUNK + 1, 3 * CHUNK - 5])
def test_lengths(T):
    assert_matches(lambda *x: chunk_gla(*x, backend="triton"), recurrent_gla, gla_inputs(2, T, 2, seed=T), tol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("N", [2 * SCAN_BLOCK + 5, SHORT_SCAN, 3])
@pytest.mark.parametrize("K", [16, 64])
def test_state_scan(reverse, N, K):
    # Blocked: more chunks than one block, whose carry then crosses blocks. Step by step: few chunks,
    # the state split over programs by key rows (2 and 8 of them here). Strong and mild decays.
    BH, V = 2, 16
    gen = torch.Generator().manual_seed(1)
    contributions = torch.randn(BH, N, K, V, generator=gen)
    log_decays = -torch.rand(BH, N, K, generator=gen) * torch.tensor([0.1, 30.0]).repeat(K // 2)
    states = scan_states(contributions.clone().to(DEVICE), log_decays.to(DEVICE), reverse).cpu()
    expected, carry = torch.empty_like(contributions, dtype=torch.float64), torch.zeros(BH, K, V, dtype=torch.float64)
    for n in reversed(range(N)) if reverse else range(N):
        expected[:, n] = carry
        carry = log_decays[:, n, :, None].double().exp() * carry + contributions[:, n]
    assert rel_err(states, expected) < 1e-6


@pytest.mark.parametrize("order", [ScanOrder.ROW_FORWARD, ScanOrder.COL_REVERSE])
def test_strong_decay_takes_the_exact_path_without_overflow(order):
    # Gates down to -20 per step: a chunk's cumulative decay reaches e^-1280, far past float32.
    grid = (10, 17)
    inputs = gla_inputs(1, 170, 2, gate_floor=-20.0, seed=5)
    assert_matches(lambda *x: scan_gla(*x, order, grid, backend="triton"), lambda *x: naive_gla(*x, order, grid),
                   inputs, tol=1e-5)


def test_mixed_decay_switches_paths_chunk_by_chunk():
    q, k, v, g = gla_inputs(1, 4 * CHUNK - 7, 2, seed=11)
    g[:, CHUNK:2 * CHUNK, 1, 3] = -15.0  # one channel of one head of one chunk decays strongly
    g[:, 3 * CHUNK:] *= 8.0
    assert_matches(lambda *x: chunk_gla(*x, backend="triton"), recurrent_gla, (q, k, v, g), tol=1e-5)


def test_explicit_scale():
    inputs = gla_inputs(1, 70, 2, seed=3)
    assert_matches(lambda *x: chunk_gla(*x, scale=0.37, backend="triton"),
                   lambda *x: recurrent_gla(*x, scale=0.37), inputs, tol=1e-5)


def test_float16_inputs():
    inputs = gla_inputs(1, 2 * CHUNK + 9, 2, dtype=torch.float16, seed=4)
    assert_matches(lambda *x: chunk_gla(*x, backend="triton"), recurrent_gla, inputs, tol=5e-3)


@pytest.mark.parametrize("gates", ["dig", "strong"])
def test_bfloat16_within_the_accuracy_bar(gates):
    # The GPU's bfloat16 and tf32 roundings (emulated by the interpreter): output and every
    # gradient, the gate gradient above all, within 5e-3 of float64. DiG's gates (logsigmoid / 16)
    # decay slowly, so each chunk's scores and the states both matter; strong gates take the
    # exact path. The float64 reference sees the same bfloat16 inputs.
    side, floor = (32, None) if gates == "dig" else (12, -20.0)
    q, k, v, g = random_gla_inputs(1, side * side, 2, 32, 64, gate_floor=floor, seed=13)
    if gates == "dig":
        g = g / 16
    order, grid = ScanOrder.COL_FORWARD, (side, side)
    inputs = [x.to(torch.bfloat16) for x in (q, k, v)] + [g.float()]
    assert_matches(lambda *x: scan_gla(*x, order, grid, backend="triton"),
                   lambda *x: torch_float64(*x, order, grid), inputs, tol=5e-3)


def test_fused_gate_activation():
    q, k, v, _ = gla_inputs(1, 130, 2, seed=7)
    logits = torch.randn(q.shape, generator=torch.Generator().manual_seed(8)) * 6.0
    order, grid = ScanOrder.ROW_REVERSE, (10, 13)
    assert_matches(lambda *x: scan_gla(*x, order, grid, backend="triton", gate_logit_normalizer=16.0),
                   lambda *x: naive_gla(*x, order, grid, gate_logit_normalizer=16.0), (q, k, v, logits), tol=1e-5)


@pytest.mark.parametrize("raw_gate", [False, True])
@pytest.mark.parametrize("order, grid", [(ScanOrder.COL_REVERSE, (11, 9)), (ScanOrder.ROW_FORWARD, (11, 9)),
                                         (ScanOrder.COL_FORWARD, (13, 20))])
def test_fused_gated_rms_norm(raw_gate, order, grid):
    # T = 99: one program per sequence-head for the whole forward (triton_forward.SHORT_FORWARD);
    # T = 260 (5 chunks): the three per-chunk launches.
    q, k, v, g = gla_inputs(2, grid[0] * grid[1], 2, seed=9)
    gen = torch.Generator().manual_seed(10)
    if raw_gate:
        g = torch.randn(g.shape, generator=gen) * 4.0
    gate, weight = torch.randn(v.shape, generator=gen), 1.0 + 0.5 * torch.randn(v.shape[-1], generator=gen)
    options = {"gate_logit_normalizer": 16.0 if raw_gate else None, "norm_eps": 1e-5}
    assert_matches(lambda q, k, v, g, z, w: scan_gla(q, k, v, g, order, grid, backend="triton", output_gate=z,
                                                     norm_weight=w, **options),
                   lambda q, k, v, g, z, w: naive_gla(q, k, v, g, order, grid, output_gate=z, norm_weight=w, **options),
                   (q, k, v, g, gate, weight), tol=1e-5)


@pytest.mark.parametrize("order, grid", [(ScanOrder.ROW_REVERSE, (12, 21)), (ScanOrder.COL_FORWARD, (12, 21))])
def test_short_forward_matches_the_per_chunk_kernels(order, grid, monkeypatch):
    # Up to SHORT_FORWARD chunks the forward is one program per sequence-head; forced off, the same
    # call takes the summary, the scan and the output kernel. The same products in the same order:
    # out, the saved o and states, bit for bit in the interpreter. T = 252: four chunks, the last
    # one partial; gate logits and the gated norm as DiG calls it, and one channel of one head
    # decaying strongly over the second chunk (flagged, then completed by triton_exact).
    from kernels.gla import triton_forward
    from kernels.gla.triton_backend import order_arguments

    B, H, T = 2, 2, grid[0] * grid[1]
    assert triton.cdiv(T, CHUNK) == triton_forward.SHORT_FORWARD
    q, k, v, _ = gla_inputs(B, T, H, seed=16)
    gen = torch.Generator().manual_seed(17)
    logits, gate = torch.randn(q.shape, generator=gen) * 4.0, torch.randn(v.shape, generator=gen)
    logits[1, CHUNK + 10:2 * CHUNK, 1, 7] = -2000.0  # logsigmoid / 16: -125 per step, the chunk e^-6750
    weight = torch.rand(v.shape[-1], generator=gen) + 0.5
    args = (*(x.to(DEVICE) for x in (q, k, v, logits, gate, weight)), 0.2, 16.0, 1e-5,
            order_arguments(order, *grid), True)
    fused = triton_forward.forward(*args)
    monkeypatch.setattr(triton_forward, "SHORT_FORWARD", 0)
    per_chunk = triton_forward.forward(*args)
    for a, b in zip(fused, per_chunk):
        assert torch.equal(a, b) if not CUDA else torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    ref = naive_gla(*(x.double() for x in (q, k, v, logits)), order, grid, scale=0.2, gate_logit_normalizer=16.0,
                    output_gate=gate.double(), norm_weight=weight.double(), norm_eps=1e-5)
    assert rel_err(fused[0].cpu(), ref) <= 1e-5


@pytest.mark.parametrize("order, grid", [(ScanOrder.ROW_FORWARD, (5, 13)), (ScanOrder.COL_REVERSE, (13, 5))])
def test_strided_views_are_read_in_place(order, grid):
    # q, k, v, gate logits and output gate as column slices of one wider tensor, as DiG's fused
    # projection makes them (odd row stride, odd T: the last chunk has one token). The kernels read
    # them in place and give what contiguous copies give, output and every gradient. One chunk
    # decays strongly (one channel of one head): the exact path reads strided inputs too.
    from kernels.gla.triton_backend import readable_in_place

    B, H, K, V, T = 2, 2, 16, 32, grid[0] * grid[1]
    widths = [H * K, H * K, H * V, H * K, H * V, 3]
    wide = torch.randn(B, T, sum(widths), generator=torch.Generator().manual_seed(15))
    wide[:, :CHUNK, 2 * H * K + H * V + K + 5] = -40.0  # a gate logit of head 1: logsigmoid / 16 = -2.5 per step
    weight = torch.rand(V) + 0.5

    def fn(wide, copy):
        *views, _ = wide.split(widths, dim=-1)
        inputs = [x.view(B, T, H, -1).contiguous() if copy else x.view(B, T, H, -1) for x in views]
        assert all(readable_in_place(x) for x in inputs) and copy == inputs[0].is_contiguous()
        return scan_gla(*inputs[:4], order, grid, backend="triton", gate_logit_normalizer=16.0,
                        output_gate=inputs[4], norm_weight=weight)

    out, (grad,) = outputs_and_grads(lambda x: fn(x, False), [wide.to(DEVICE)])
    ref, (ref_grad,) = outputs_and_grads(lambda x: fn(x, True), [wide.to(DEVICE)])
    assert torch.equal(out, ref) and torch.equal(grad, ref_grad)


def test_inference_keeps_nothing_and_matches():
    q, k, v, g = (x.to(DEVICE) for x in gla_inputs(1, 99, 2, seed=14))
    gate, weight = torch.randn_like(v), torch.ones(64, device=DEVICE)
    fn = lambda: scan_gla(q, k, v, g, ScanOrder.ROW_FORWARD, (9, 11), backend="triton",  # noqa: E731
                          output_gate=gate, norm_weight=weight)
    with torch.no_grad():
        out = fn()
    assert torch.equal(out, fn())


def test_model_layer_on_triton_matches_torch():
    from dig_scale.models.gla import GatedLinearAttention

    torch.manual_seed(0)
    torch_layer = GatedLinearAttention(128, 2, backend="torch")
    with torch.no_grad():
        for p in torch_layer.parameters():
            p.normal_(0, 0.2)
    triton_layer = GatedLinearAttention(128, 2, backend="triton").to(DEVICE)
    triton_layer.load_state_dict(torch_layer.state_dict())
    x, weight = torch.randn(2, 96, 128), torch.randn(2, 96, 128)
    order, grid = ScanOrder.COL_FORWARD, (8, 12)
    out, ref = triton_layer(x.to(DEVICE), order, grid), torch_layer(x, order, grid)
    (out * weight.to(DEVICE)).sum().backward()
    (ref * weight).sum().backward()
    assert rel_err(out.cpu(), ref) < 1e-5
    for (name, a), b in zip(triton_layer.named_parameters(), torch_layer.parameters()):
        assert rel_err(a.grad.cpu(), b.grad) < 1e-5, name


def test_op_compiles_as_one_node_and_passes_opcheck():
    q, k, v, g = (x.to(DEVICE).requires_grad_() for x in gla_inputs(1, 20, 2, seed=12))
    gate, weight = torch.randn_like(v, requires_grad=True), torch.randn(64, device=DEVICE, requires_grad=True)

    def fn(q, k, v, g, gate, weight):
        return scan_gla(q, k, v, g, ScanOrder.COL_REVERSE, (4, 5), backend="triton", gate_logit_normalizer=4.0,
                        output_gate=gate, norm_weight=weight)

    out = torch.compile(fn, backend="aot_eager", fullgraph=True)(q, k, v, g, gate, weight)
    out.sum().backward()
    assert torch.allclose(out, fn(q, k, v, g, gate, weight))
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in (q, k, v, g, gate, weight))
    torch.library.opcheck(torch.ops.dig_kernels.gla.default,
                          (q, k, v, g, gate, weight, 0.1, 4.0, 1e-6, 3, 4, 5, "triton", True))
    assert chunk_length("triton", 20) == CHUNK


def test_clear_errors():
    q, k, v, g = (x.to(DEVICE) for x in gla_inputs(1, 12, 2, K=24))
    with pytest.raises(ValueError, match="powers of two"):
        chunk_gla(q, k, v, g, backend="triton")
    q, k, v, g = (x.to(DEVICE) for x in gla_inputs(1, 12, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="takes torch.float32"):
        chunk_gla(q, k, v, g, backend="triton")


# ---- GPU only: real DiG sizes in bfloat16 -------------------------------------------------------

@gpu_only
@pytest.mark.parametrize("B, grid, H, gate_floor", [
    (4, (32, 32), 6, None), (2, (64, 64), 18, None), (1, (128, 128), 6, None), (2, (16, 16), 12, -20.0),
])
@pytest.mark.parametrize("order", list(ScanOrder))
def test_gpu_bfloat16_real_sizes(B, grid, H, gate_floor, order):
    T = grid[0] * grid[1]
    q, k, v, g = random_gla_inputs(B, T, H, 32, 64, gate_floor=gate_floor, seed=T + H)
    inputs = [x.cuda().to(torch.bfloat16) for x in (q, k, v)] + [g.float().cuda()]
    out, grads = outputs_and_grads(lambda *x: scan_gla(*x, order, grid), inputs)
    ref, ref_grads = outputs_and_grads(lambda *x: torch_float64(*x, order, grid), inputs)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref) <= 5e-3
    for name, a, b in zip("qkvg", grads, ref_grads):
        assert rel_err(a, b) <= 5e-3, name


@gpu_only
def test_gpu_more_sequences_than_a_grid_axis_holds():
    # B*H = 66,600 per-chunk programs of one chunk each: past the 65,535 a second grid axis holds.
    # The last sequences, computed alone, must match bit for bit.
    B, H, order, grid = 3700, 18, ScanOrder.ROW_FORWARD, (8, 8)
    q, k, v, g = random_gla_inputs(B, 64, H, 32, 64, seed=1)
    inputs = [x.cuda().to(torch.bfloat16) for x in (q, k, v)] + [g.float().cuda()]
    d_out = torch.randn(B, 64, H, 64, device="cuda", dtype=torch.bfloat16)

    def out_and_grads(xs, d):
        xs = [x.detach().requires_grad_() for x in xs]
        out = scan_gla(*xs, order, grid)
        return out, torch.autograd.grad(out, xs, d)

    out, grads = out_and_grads(inputs, d_out)
    tail, tail_grads = out_and_grads([x[-2:] for x in inputs], d_out[-2:])
    assert torch.equal(out[-2:], tail)
    for a, b in zip(grads, tail_grads):
        assert torch.equal(a[-2:], b)


@gpu_only
def test_gpu_model_layer_bfloat16_autocast():
    from dig_scale.models.gla import GatedLinearAttention

    torch.manual_seed(0)
    layer = GatedLinearAttention(384, 6).cuda()
    x = torch.randn(4, 1024, 384, device="cuda")
    order, grid = ScanOrder.ROW_REVERSE, (32, 32)
    with torch.autocast("cuda", torch.bfloat16):
        out, grads = outputs_and_grads(lambda x: layer(x, order, grid), [x])
    layer.backend = "torch"
    ref, ref_grads = outputs_and_grads(lambda x: layer.double()(x, order, grid), [x.double()])
    # Looser than the kernel's 5e-3: autocast also rounds every projection to bfloat16.
    assert rel_err(out, ref) <= 1e-2 and rel_err(grads[0], ref_grads[0]) <= 1e-2


@gpu_only
def test_gpu_cuda_graph_capture_and_inductor():
    q, k, v = (x.cuda().bfloat16().requires_grad_() for x in gla_inputs(2, 1024, 6)[:3])
    g = gla_inputs(2, 1024, 6)[3].cuda().requires_grad_()
    z = torch.randn_like(v, requires_grad=True)
    w = torch.ones(64, device="cuda", requires_grad=True)
    inputs = (q, k, v, g, z, w)
    d_out = torch.randn_like(v)

    def fn(q, k, v, g, z, w):
        return scan_gla(q, k, v, g, ScanOrder.COL_FORWARD, (32, 32), gate_logit_normalizer=16.0, output_gate=z,
                        norm_weight=w)

    def step():  # autograd.grad, not .backward(): no AccumulateGrad nodes tied to another stream
        out = fn(*inputs)
        return (out, *torch.autograd.grad(out, inputs, d_out))

    step()  # compiles the kernels
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm up outside the capture
            step()
        with torch.cuda.graph(graph):
            captured = step()
    torch.cuda.current_stream().wait_stream(side)
    for x in inputs:  # new values in place: the replay must see them
        x.data.mul_(0.5)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(captured, step()):
        assert torch.equal(a, b)
    assert torch.equal(torch.compile(fn, fullgraph=True)(*inputs), fn(*inputs))
