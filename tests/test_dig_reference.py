"""Our DiG (raster tokens + per-layer scan orders + pre-oriented conv kernels) computes the same
function as the reference's physical flips/transposes, after load_reference_state_dict."""
import pytest
import torch
from reference_dig import ReferenceDiG

from dig_scale.models import create_model, load_reference_state_dict
from dig_scale.models.reference_weights import convert_reference_state_dict

D, HEADS, MLP, CLASSES, PATCH, CHANNELS = 32, 2, 48, 5, 2, 3


def build_pair(depth, grid, skip, seed=0):
    torch.manual_seed(seed)
    ref = ReferenceDiG(grid, PATCH, CHANNELS, D, depth, HEADS, MLP, CLASSES, skip).double()
    with torch.no_grad():  # randomise everything: identity/zero init would hide orientation bugs
        for p in ref.parameters():
            p.normal_(0, 0.3)
    ours = create_model("DiG-S/2", input_size=(grid[0] * PATCH, grid[1] * PATCH), in_channels=CHANNELS,
                        hidden_size=D, depth=depth, num_heads=HEADS, mlp_hidden_size=MLP,
                        num_classes=CLASSES, skip=skip, gla_backend="torch").double()
    load_reference_state_dict(ours, ref.state_dict())
    return ref.eval(), ours.eval()


def inputs(grid, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, CHANNELS, grid[0] * PATCH, grid[1] * PATCH, generator=gen, dtype=torch.float64)
    return x, torch.tensor([3.0, 871.0], dtype=torch.float64), torch.tensor([1, 4])


def assert_same(actual, expected, scale=1.0, msg=None):
    """Equal up to float64 rounding at `scale`, the largest magnitude of the quantity compared.
    Randomised weights (std 0.3) push gradients to ~1e3, and what reaches one small tensor has
    passed through those: summation order alone moves it by ~1e-9 absolute (1e-12 of the scale);
    an orientation or pairing bug moves it by O(1)."""
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-11 * max(scale, 1.0), msg=msg)


def check_same_function(depth, grid, skip):
    ref, ours = build_pair(depth, grid, skip)
    x, t, y = inputs(grid)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref, out_ours = ref(x_ref, t, y), ours(x_ours, t, y)
    assert out_ref.abs().mean() > 1e-3  # a real signal, not a zero-initialised path
    assert_same(out_ours, out_ref)

    weight = torch.randn_like(out_ref)
    (out_ref * weight).sum().backward()
    (out_ours * weight).sum().backward()
    assert_same(x_ours.grad, x_ref.grad)
    ref_grads = {k: p.grad for k, p in ref.named_parameters() if p.grad is not None}
    expected = convert_reference_state_dict(ours, ref_grads)  # renames + conv re-orientation
    scale = max(g.abs().max().item() for g in expected.values())
    for name, p in ours.named_parameters():
        if name in expected:
            assert_same(p.grad, expected[name], scale, msg=name)


@pytest.mark.parametrize("depth", range(1, 9))
@pytest.mark.parametrize("grid", [(3, 3), (3, 5)])
def test_scan_orders_reproduce_physical_permutations(depth, grid):
    check_same_function(depth, grid, skip=False)


@pytest.mark.parametrize("depth", [2, 4, 6, 8])
@pytest.mark.parametrize("grid", [(4, 4), (2, 5)])
def test_u_shape_skips_pair_tokens_like_the_reference(depth, grid):
    check_same_function(depth, grid, skip=True)


def test_load_reference_lists_every_problem_at_once():
    ref, ours = build_pair(2, (3, 3), skip=False)
    state = dict(ref.state_dict())
    del state["blocks.0.attn.q_proj.weight"]
    state["blocks.1.dw_conv.weight"] = torch.zeros(D, 1, 5, 5)
    state["blocks.0.attn.extra"] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        load_reference_state_dict(ours, state)
    message = str(err.value)
    assert "blocks.0.attn.q_proj.weight" in message
    assert "blocks.0.attn.extra" in message
    assert "blocks.1.dw_conv.weight: checkpoint (32, 1, 5, 5), model (32, 1, 3, 3)" in message
