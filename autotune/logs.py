"""Keep library chatter away from users: missing optional native kernels, experimental-feature
notes, deprecation notices. Called by the CLI and by daemon worker processes."""
from __future__ import annotations

import logging
import warnings


def quiet_libraries() -> None:
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*experimental.*")
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
