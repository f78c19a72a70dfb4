"""Registry, parameter counts, initialisation and the building blocks against their formulas."""
import math

import numpy as np
import pytest
import torch

from dig_scale.models import DiG, DiT, create_model, model_names
from dig_scale.models.layers import TimestepEmbedder, sincos_pos_embed_2d


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, expected", [
    ("DiG-S/2", 33_081_632), ("DiG-XL/2", 675_953_952), ("DiT-S/2", 32_963_360), ("DiT-XL/2", 675_129_632)])
def test_parameter_counts_including_frozen_pos_embed(name, expected):
    with torch.device("meta"):
        assert n_params(create_model(name)) == expected


def test_registry_covers_all_sizes_and_patches():
    names = model_names()
    assert len(names) == 24 and "DiG-XL/8" in names and "DiT-B/4" in names
    with torch.device("meta"):
        xl = create_model("DiG-XL/2")
        assert (len(xl.blocks), xl.blocks[0].attn.num_heads, xl.patch_size) == (28, 18, 2)
        assert create_model("DiT-XL/2").blocks[0].attn.num_heads == 16
        assert create_model("DiG-B/4").patch_size == 4


def test_overrides_and_errors():
    model = create_model("DiG-S/2", input_size=16, depth=3, hidden_size=64, num_heads=2, num_classes=7)
    assert isinstance(model, DiG) and len(model.blocks) == 3 and model.y_embedder.embedding_table.num_embeddings == 8
    with pytest.raises(ValueError, match="did you mean DiG-S/2"):
        create_model("DiG-S2")
    with pytest.raises(TypeError, match="no argument"):
        create_model("DiT-S/2", skip=True)
    with pytest.raises(ValueError, match="even depth"):
        create_model("DiG-S/2", depth=5, skip=True)


def tiny(name="DiG-S/2", **kw):
    args = dict(input_size=8, depth=4, hidden_size=64, num_heads=2, num_classes=10)
    return create_model(name, **{**args, **kw})


def test_dig_initialisation():
    torch.manual_seed(0)
    model = tiny(depth=2)
    for block in model.blocks:
        w = block.dw_conv.weight
        assert torch.all(w[:, :, 1, 1] == 1) and w.abs().sum() == w.shape[0] and torch.all(block.dw_conv.bias == 0)
        assert torch.all(block.adaLN_modulation[-1].weight == 0) and torch.all(block.adaLN_modulation[-1].bias == 0)
        # GLA projections: Xavier-uniform with gain 2^-2.5 -> bound = gain * sqrt(6 / (fan_in + fan_out)).
        q = block.attn.q_proj.weight
        bound = 2**-2.5 * math.sqrt(6 / sum(q.shape))
        assert q.abs().max() <= bound and q.abs().max() > 0.9 * bound
        down = block.mlp.down_proj.weight
        assert down.abs().max() > 0.9 * math.sqrt(6 / sum(down.shape))  # plain Xavier (gain 1)
    assert torch.all(model.final_layer.linear.weight == 0)
    assert abs(model.y_embedder.embedding_table.weight.std().item() - 0.02) < 0.005
    assert not model.pos_embed.requires_grad
    x = torch.randn(2, 4, 8, 8)
    assert torch.all(model(x, torch.tensor([1, 2]), torch.tensor([0, 1])) == 0)  # adaLN-Zero output


def test_sincos_pos_embed_matches_mae_formula():
    dim, (h, w) = 16, (3, 5)
    omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim / 4))
    expected = []
    for r in range(h):
        for c in range(w):
            cx, ry = c * omega, r * omega
            expected.append(np.concatenate([np.sin(cx), np.cos(cx), np.sin(ry), np.cos(ry)]))
    np.testing.assert_allclose(sincos_pos_embed_2d(dim, (h, w)).numpy(), np.array(expected), atol=1e-6)


def test_timestep_embedding_formula():
    t = torch.tensor([0.0, 17.0, 999.0])
    emb = TimestepEmbedder.timestep_embedding(t, 8)
    freqs = torch.exp(-math.log(10000) * torch.arange(4) / 4)
    torch.testing.assert_close(emb, torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], -1))


def test_dit_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    model = tiny("DiT-S/2")
    attn = model.blocks[0].attn
    x = torch.randn(2, 16, 64)
    q, k, v = attn.qkv(x).view(2, 16, 3, 2, 32).permute(2, 0, 3, 1, 4)
    o = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(32), dim=-1) @ v
    torch.testing.assert_close(attn(x), attn.proj(o.transpose(1, 2).reshape(2, 16, 64)), rtol=1e-5, atol=1e-5)
    assert isinstance(model, DiT)


def test_swiglu_gate_derivatives_and_autograd_reference():
    from dig_scale.models.dig import _SiLUGate

    gate_value = torch.randn(3, 5, 2 * 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_SiLUGate.apply, (gate_value,))
    gate, value = gate_value.chunk(2, dim=-1)
    torch.testing.assert_close(_SiLUGate.apply(gate_value), torch.nn.functional.silu(gate) * value)
    low = gate_value.detach().bfloat16().requires_grad_()  # bf16: gradients in bf16, computed in fp32
    _SiLUGate.apply(low).sum().backward()
    expected = torch.autograd.grad((torch.nn.functional.silu(gate) * value).sum(), gate_value)[0]
    assert low.grad.dtype == torch.bfloat16
    torch.testing.assert_close(low.grad.double(), expected, rtol=2e-2, atol=2e-2)


def test_forward_with_cfg_guides_noise_channels():
    torch.manual_seed(0)
    model = tiny()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 4, 8, 8).repeat(2, 1, 1, 1)
    t, y = torch.tensor([5, 9, 5, 9]), torch.tensor([1, 2, 10, 10])
    model.eval()
    out = model.forward_with_cfg(x, t, y, cfg_scale=3.0)
    raw = model(x, t, y)
    cond, uncond = raw[:2, :4], raw[2:, :4]
    torch.testing.assert_close(out[:2, :4], uncond + 3.0 * (cond - uncond))
    torch.testing.assert_close(out[:, 4:], raw[:, 4:])


def test_torch_compile_traces_dig_without_graph_breaks():
    torch.manual_seed(0)
    model = tiny(input_size=(8, 12))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    model.eval()
    x, t, y = torch.randn(2, 4, 8, 12), torch.tensor([3, 700]), torch.tensor([1, 2])
    eager = model(x, t, y)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # fullgraph: any break raises
    out = compiled(x, t, y)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name, kw", [("DiG-S/2", {"skip": True}), ("DiG-S/2", {"input_size": (8, 12)}),
                                      ("DiT-S/2", {})])
def test_flops_per_image_counts_every_matmul(name, kw):
    """Against torch's FLOP counter over a forward of one image (the math attention kernel, whose
    matmuls it sees). The GLA custom op is opaque to it: its scan is added as its own formula."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny(name, **kw).eval()
    x = torch.randn(1, 4, *model.input_size)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        model(x, torch.tensor([3]), torch.tensor([1]))
    tokens = model.grid[0] * model.grid[1]
    scan = sum(block.attn.scan_flops(tokens) for block in model.blocks) if name.startswith("DiG") else 0
    assert model.flops_per_image() == counter.get_total_flops() + scan


def test_gla_chunk_length_is_the_backends():
    from kernels.gla import chunk_length
    from kernels.gla.triton_tiles import CHUNK

    assert [chunk_length("torch", t) for t in (5, 16, 20, 4096)] == [8, 16, 24, 32]
    assert chunk_length("triton", 4096) == CHUNK
    block = tiny().blocks[0]  # on CPU the torch backend runs: 16 tokens in one chunk of 16
    dk, dv, heads = block.attn.head_k_dim, block.attn.head_v_dim, block.attn.num_heads
    assert block.attn.scan_flops(16) == 16 * heads * (2 * 16 * (dk + dv) + 4 * dk * dv)
