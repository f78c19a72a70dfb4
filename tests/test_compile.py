"""Regional compilation (train/compile.py) computes what the eager model computes. On CPU the
CUDA-graph mode compiles as without graphs (torch.compile records graphs on CUDA only), so this
checks the compiled blocks and the step marks the trainer makes; the graphs' speed is measured in
bench/train_step.py on a GPU."""
import copy

import pytest
import torch

from dig_scale.models import create_model
from dig_scale.train.compile import compile_blocks, mark_step


@pytest.mark.parametrize("family", ["DiG", "DiT"])
def test_compiled_blocks_match_the_eager_model(family):
    torch.manual_seed(0)
    arch = {"depth": 2, "hidden_size": 64, "num_heads": 2, "class_dropout_prob": 0.0}  # no random label drops
    eager = create_model(f"{family}-S/2", input_size=8, num_classes=10, **arch,
                         **({"gla_backend": "torch"} if family == "DiG" else {}))
    compiled = copy.deepcopy(eager)
    compile_blocks(compiled, cuda_graphs=True)
    for _ in range(2):  # the second step replays what the first compiled
        x, t, y = torch.randn(3, 4, 8, 8), torch.randint(0, 1000, (3,)), torch.randint(0, 10, (3,))
        mark_step()
        outputs = []
        for model in (eager, compiled):
            model.zero_grad(set_to_none=True)
            out = model(x, t, y)
            out.square().mean().backward()
            outputs.append((out.detach(), [p.grad for p in model.parameters()]))
        (out_e, grads_e), (out_c, grads_c) = outputs
        torch.testing.assert_close(out_c, out_e, rtol=1e-4, atol=1e-5)
        for g_c, g_e in zip(grads_c, grads_e):
            torch.testing.assert_close(g_c, g_e, rtol=1e-3, atol=1e-5)
