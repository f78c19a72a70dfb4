import os
import sys
from pathlib import Path

import torch

# Test helpers (gla_testing.py, ...) import as top-level modules.
sys.path.insert(0, str(Path(__file__).parent))

# Without a GPU, Triton kernels run through Triton's interpreter on CPU tensors (tests/test_gla_triton.py).
# Triton reads this when a kernel is defined, so it must be set before `kernels` is first imported;
# it changes nothing else: on CPU every GLA caller still gets the torch backend unless it asks for "triton".
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
