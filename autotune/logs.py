"""Keep library chatter away from users: missing optional native kernels, experimental-feature
notes, deprecation notices.

Two levels. :func:`drop_false_alarms` (on importing autotune, so a plain script that calls
``autotune.search`` gets it too) drops only messages that are false alarms wherever autotune runs:
torchao's "Failed to load ..._C_....so" for CUDA kernels a CPU build of torch can never load, and
torch's notice that torchao registers an enum the old way. :func:`quiet_libraries` (the CLI unless
``-v``, and daemon workers) also lowers those libraries' loggers and warnings to errors."""
from __future__ import annotations

import contextlib
import logging
import sys
import warnings


def _cpu_torch() -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and getattr(getattr(torch, "version", None), "cuda", "") is None


class _FalseAlarm(logging.Filter):
    """Drops a logger's records whose message contains ``text`` (when ``only_if`` holds)."""

    def __init__(self, text: str, only_if=lambda: True):
        super().__init__()
        self.text, self.only_if = text, only_if

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.text in record.getMessage() and self.only_if())


#: (logger, text of the message, when it is a false alarm)
FALSE_ALARMS = (
    ("torchao", "Failed to load", _cpu_torch),  # torchao's CUDA kernels (_C_mxfp8, _C_cutlass_90a) on a CPU build
    ("torch.utils._pytree", "is an Enum subclass", lambda: True),  # torchao's KernelPreference registration
)


def drop_false_alarms() -> None:
    """Install the :data:`FALSE_ALARMS` filters once."""
    for name, text, only_if in FALSE_ALARMS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _FalseAlarm) and f.text == text for f in logger.filters):
            logger.addFilter(_FalseAlarm(text, only_if))


def quiet_libraries() -> None:
    drop_false_alarms()
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*experimental.*")
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


@contextlib.contextmanager
def no_progress_bars():
    """transformers' own progress bars ("Writing model shards") off for the work inside: autotune's
    output is its own progress and summary."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
