"""Library log lines that say nothing to someone training with dig-scale, dropped at their source.
Each filter matches one message exactly; every other line of those loggers still shows."""
from __future__ import annotations

import logging

# logger name -> the start of a message it logs that is noise here, and why
NOTICES = {
    # torch.utils.cpp_extension, imported by DeepSpeed's op builders, on a machine with a CUDA
    # toolkit but no GPU: dig-scale never builds CUDA extensions there.
    "torch.utils.cpp_extension": "No CUDA runtime is found",
    # DeepSpeed's WarmupLR asks itself for the learning rate in its own constructor, before step 0.
    "DeepSpeed": "Attempting to get learning rate from scheduler before it has started",
}


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def silence_library_notices() -> None:
    """Install the filters; call before importing DeepSpeed (the CUDA notice comes at import)."""
    for name, prefix in NOTICES.items():
        logging.getLogger(name).addFilter(_DropMessage(prefix))
