"""Activation checkpointing applied from outside the model: the policy picks the blocks, their
gradients stay bit-identical, the module tree and parameter names stay as they are."""
import copy

import pytest
import torch

from dig_scale.models import create_model
from dig_scale.train.activation_checkpointing import apply_activation_checkpointing, blocks_to_checkpoint


def tiny(name="DiG-S/2"):
    torch.manual_seed(0)
    model = create_model(name, input_size=8, depth=4, hidden_size=64, num_heads=2, num_classes=10)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model


def inputs():
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([3, 700]), \
        torch.tensor([1, 2])


@pytest.mark.parametrize("policy, expected", [
    ("none", set()), ("all", {0, 1, 2, 3, 4}), ("every:2", {0, 2, 4}), ("first:2", {0, 1}), ("first:9", set(range(5)))])
def test_policies(policy, expected):
    assert blocks_to_checkpoint(policy, 5) == expected


@pytest.mark.parametrize("policy", ["every", "every:0", "first:-1", "all:2", "some"])
def test_bad_policies_are_refused(policy):
    with pytest.raises(ValueError, match="none|all|every:K|first:N"):
        blocks_to_checkpoint(policy, 5)


def recomputed_blocks(model, x, t, y) -> list[int]:
    """Indices of blocks whose forward runs again during backward (seen from a sub-module: the
    recomputation calls the block's forward directly)."""
    calls = []
    for i, block in enumerate(model.blocks):
        block.adaLN_modulation.register_forward_pre_hook(lambda module, args, i=i: calls.append(i))
    model(x, t, y).square().sum().backward()
    forward_calls = len(model.blocks)
    return sorted(calls[forward_calls:])


@pytest.mark.parametrize("name", ["DiG-S/2", "DiT-S/2"])
def test_gradients_are_identical_and_only_chosen_blocks_recompute(name):
    plain, ckpt = tiny(name), tiny(name)
    chosen = apply_activation_checkpointing(ckpt.blocks, "every:2")
    assert chosen == {0, 2}
    assert recomputed_blocks(plain, *inputs()) == []
    assert recomputed_blocks(ckpt, *inputs()) == [0, 2]
    for (key, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        if a.grad is not None:
            assert torch.equal(a.grad, b.grad), key


def test_model_structure_names_and_copies_are_unchanged():
    model = tiny()
    names = [n for n, _ in model.named_parameters()]
    apply_activation_checkpointing(model.blocks, "all")
    assert [n for n, _ in model.named_parameters()] == names
    assert list(model.state_dict()) == list(tiny().state_dict())
    copied = copy.deepcopy(model)  # the EMA is a deep copy: its blocks must run its own weights
    with torch.no_grad():
        for p in copied.parameters():
            p.zero_()
    x, t, y = inputs()
    model.eval(), copied.eval()
    assert not torch.equal(copied(x, t, y), model(x, t, y))
    assert torch.equal(copied(x, t, y), torch.zeros_like(copied(x, t, y)))


def test_torch_compile_traces_checkpointed_blocks_without_graph_breaks():
    model = tiny()
    apply_activation_checkpointing(model.blocks, "all")
    x, t, y = inputs()
    eager = model(x, t, y)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(x, t, y)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
