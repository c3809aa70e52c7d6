"""A team's compile cache: compiled artifacts shared through Redis, so a host compiles nothing another
host of the team already compiled.

What travels: torch's portable compile-cache artifacts (``torch.compiler.save_cache_artifacts``:
inductor's FX graphs with their compiled kernels, AOTAutograd entries, autotuning results), and the
AOTInductor packages the trial loaded (:mod:`autotune.engines.aoti`: ``torch.export`` and the ahead-of-
time compile are in no torch cache; a package of the 135M model, ~4.4 MB, took 80-90 s on 2 cores). A
trial saves them after its warm-up, when every program of its envelope has been compiled, and the next
trial of the same recipe and model on any host of the same hardware class and library versions loads
them before its first call: its compiles become cache hits, its packages are written, not built.

Trust: an artifact is native code that every host will load and run. Each is stored under the SHA-256
of its content, and that hash is recorded in the tuning database with the measurement that saved it
(``Figures.compile_artifact``). A trial loads only an artifact the database names, and only when the
bytes Redis returns hash to that name; anything else is refused with one line and never loaded (the
trial compiles for itself). Redis is read and written only at the URL the team gives
(``--compile-cache``, ``AUTOTUNE_COMPILE_CACHE``); its password is masked in every output."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from urllib.parse import urlsplit, urlunsplit

from .errors import AutotuneError, UsageError

ENV = "AUTOTUNE_COMPILE_CACHE"
#: an artifact that carries AOTInductor packages starts with this, then the length of a JSON index (8
#: bytes, big-endian) and the index: where torch's artifacts and each package's bytes lie in the rest.
#: Without packages an artifact is torch's bytes as they are
BUNDLE = b"autotune-compile-bundle/1\n"
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


def loaded(note: str | None) -> bool:
    """Whether a trial's ``compile_shared`` note says it loaded an artifact (its first call's time is then
    no compile's: the compile-time history leaves it out)."""
    return (note or "").startswith("loaded")


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


def bundle(torch_blob: bytes, packages: dict[str, tuple[bytes, bytes | None]]) -> bytes:
    """One artifact of torch's bytes and AOTInductor packages (by their share key: the package's bytes
    and its constants', or None)."""
    parts, index, at = [torch_blob], {"torch": [0, len(torch_blob)], "aoti": {}}, len(torch_blob)
    for key, (package, constants) in sorted(packages.items()):
        entry = {}
        for what, data in (("package", package), ("constants", constants)):
            if data is not None:
                entry[what] = [at, len(data)]
                parts.append(data)
                at += len(data)
        index["aoti"][key] = entry
    head = json.dumps(index, sort_keys=True).encode()
    return BUNDLE + len(head).to_bytes(8, "big") + head + b"".join(parts)


def unbundle(blob: bytes) -> tuple[bytes, dict[str, tuple[bytes, bytes | None]]]:
    """torch's bytes and the packages of an artifact (one without packages: all torch's)."""
    if not blob.startswith(BUNDLE):
        return blob, {}
    at = len(BUNDLE)
    size = int.from_bytes(blob[at:at + 8], "big")
    index = json.loads(blob[at + 8:at + 8 + size])
    body = blob[at + 8 + size:]

    def part(span):
        return None if span is None else body[span[0]:span[0] + span[1]]

    return part(index["torch"]), {key: (part(e["package"]), part(e.get("constants")))
                                  for key, e in index["aoti"].items()}


def load_into_torch(url: str, name: str) -> str:
    """In a trial, before its first call: load the named artifact into torch's local caches, and offer
    its AOTInductor packages to the engine (written to disk when a program asks for one). Returns what
    happened, in one line (loaded, missing, refused, unreachable) — never raises, never loads what does
    not verify."""
    import torch

    try:
        blob = TeamCache(url).get(name)
    except TamperedArtifact as exc:
        return f"refused: {exc}"
    except Exception as exc:  # the cache is down: compile here
        return f"unreachable: {mask(url)}: {type(exc).__name__}"
    if blob is None:
        return f"missing: artifact {name[:12]} is no longer in {mask(url)}"
    torch_blob, packages = unbundle(blob)
    if torch_blob:
        torch.compiler.load_cache_artifacts(torch_blob)
    if packages:
        from .engines import aoti

        aoti.SHARED.update(packages)
    extra = f", {len(packages)} AOTInductor package{'s' * (len(packages) != 1)}" if packages else ""
    return f"loaded {name[:12]} ({len(blob) / 1e6:.1f} MB{extra})"


def save_from_torch(url: str) -> str | None:
    """In a trial, after its warm-up: store what torch compiled or loaded in this process, with the
    AOTInductor packages it loaded; returns the artifact's name (None: nothing compiled, or the cache is
    down)."""
    import torch

    saved = torch.compiler.save_cache_artifacts()
    torch_blob = saved[0] if saved and saved[0] else b""
    aoti = sys.modules.get("autotune.engines.aoti")  # imported by the trial's engine, or no package was used
    packages = {}
    for key, path in (aoti.USED.items() if aoti is not None else ()):
        constants = aoti.constants_path(path)
        packages[key] = (path.read_bytes(), constants.read_bytes() if constants.exists() else None)
    if not torch_blob and not packages:
        return None
    try:
        return TeamCache(url).put(bundle(torch_blob, packages) if packages else torch_blob)
    except Exception:
        return None
