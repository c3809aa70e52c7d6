"""A team's compile cache: compiled artifacts shared through Redis, so a host compiles nothing another
host of the team already compiled.

What travels: torch's portable compile-cache artifacts (``torch.compiler.save_cache_artifacts``:
inductor's FX graphs with their compiled kernels, AOTAutograd entries, autotuning results). A trial
saves them after its warm-up, when every program of its envelope has been compiled, and the next trial
of the same recipe and model on any host of the same hardware class and library versions loads them
before its first call: its compiles become cache hits.

Trust: an artifact is native code that every host will load and run. Each is stored under the SHA-256
of its content, and that hash is recorded in the tuning database with the measurement that saved it
(``Figures.compile_artifact``). A trial loads only an artifact the database names, and only when the
bytes Redis returns hash to that name; anything else is refused with one line and never loaded (the
trial compiles for itself). Redis is read and written only at the URL the team gives
(``--compile-cache``, ``AUTOTUNE_COMPILE_CACHE``); its password is masked in every output."""
from __future__ import annotations

import hashlib
import os
from urllib.parse import urlsplit, urlunsplit

from .errors import AutotuneError, UsageError

ENV = "AUTOTUNE_COMPILE_CACHE"
PREFIX = "autotune:compile:"
#: an artifact is kept this long after it was last written (a month): a team's cache does not grow for ever
TTL_S = 30 * 24 * 3600


class TamperedArtifact(AutotuneError):
    """The bytes under an artifact's name do not hash to it."""


def configured(url: str | None = None) -> str | None:
    """The team compile cache's URL: ``url`` (a command-line option), else the environment's."""
    url = url or os.environ.get(ENV) or None
    if url is not None and urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise UsageError(f"--compile-cache must be a redis://, rediss:// or unix:// URL, not {mask(url)!r}")
    return url


def mask(url: str) -> str:
    """``url`` with its password (and a user's secret) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


class TeamCache:
    """Content-addressed artifacts in one Redis."""

    def __init__(self, url: str):
        import redis

        self.url = url
        self.client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)

    @property
    def display(self) -> str:
        return mask(self.url)

    def put(self, blob: bytes) -> str:
        """Store ``blob`` under its hash (kept as it is when already there); returns the hash."""
        name = digest(blob)
        self.client.set(PREFIX + name, blob, ex=TTL_S)
        return name

    def get(self, name: str) -> bytes | None:
        """The artifact named ``name``, verified; None when the cache no longer holds it."""
        blob = self.client.get(PREFIX + name)
        if blob is None:
            return None
        if digest(blob) != name:
            raise TamperedArtifact(f"compile artifact {name[:12]} in {self.display} does not match its hash: "
                                   "refused, not loaded")
        return blob


def load_into_torch(url: str, name: str) -> str:
    """In a trial, before its first call: load the named artifact into torch's local caches. Returns
    what happened, in one line (loaded, missing, refused, unreachable) — never raises, never loads
    what does not verify."""
    import torch

    try:
        blob = TeamCache(url).get(name)
    except TamperedArtifact as exc:
        return f"refused: {exc}"
    except Exception as exc:  # the cache is down: compile here
        return f"unreachable: {mask(url)}: {type(exc).__name__}"
    if blob is None:
        return f"missing: artifact {name[:12]} is no longer in {mask(url)}"
    torch.compiler.load_cache_artifacts(blob)
    return f"loaded {name[:12]} ({len(blob) / 1e6:.1f} MB)"


def save_from_torch(url: str) -> str | None:
    """In a trial, after its warm-up: store what torch compiled or loaded in this process; returns the
    artifact's name (None: nothing compiled, or the cache is down)."""
    import torch

    saved = torch.compiler.save_cache_artifacts()
    if not saved or not saved[0]:
        return None
    try:
        return TeamCache(url).put(saved[0])
    except Exception:
        return None
