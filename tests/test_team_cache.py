"""The team compile cache (autotune.compile_share) on a real Redis: a second host, with its own local
caches, compiles nothing the first already compiled; a tampered artifact is refused and never
loaded (the function a trial calls before its first call, on the real Redis: a third whole search
would add a minute to CI and nothing the two tests do not check); the password shows nowhere.
.ci/run starts the Redis (scripts/start-redis.sh)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import write_study

from autotune.compile_share import PREFIX, TamperedArtifact, TeamCache, configured, load_into_torch, mask
from autotune.errors import UsageError

REDIS = os.environ.get("AUTOTUNE_TEST_REDIS")
needs_redis = pytest.mark.skipif(not REDIS, reason="AUTOTUNE_TEST_REDIS not set: .ci/run starts Redis and sets it")
PASSWORD = "team-cache-secret"  # scripts/start-redis.sh's

#: one compiled recipe: torch.compile of the forward over a static cache, nothing else searched
ONE_COMPILED = {"compile.target": ["forward"], "compile.mode": ["default"], "compile.freezing": [False],
                "compile.cpp_wrapper": [False], "compile.prefill": ["eager"], "quantization.method": ["none"],
                "dtype.dtype": ["auto"], "attention.implementation": ["sdpa"], "attention.sdpa_backend": ["auto"], "attention.gqa": ["auto"],
                "cache.implementation": ["static"], "cache.ladder": ["one"]}

#: one recipe compiled ahead of time: an AOTInductor package, which no torch cache holds
ONE_AOTI = {"compile.target": ["aoti"], "compile.mode": ["default"], "quantization.method": ["none"],
            "dtype.dtype": ["auto"], "attention.implementation": ["sdpa"], "attention.sdpa_backend": ["auto"],
            "attention.gqa": ["auto"], "cache.implementation": ["static"], "cache.ladder": ["one"]}


def test_urls_are_checked_and_masked():
    assert mask("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert mask("redis://user:pw@host/1") == "redis://user:***@host/1"
    assert mask("redis://host:6379") == "redis://host:6379"
    with pytest.raises(UsageError, match="redis://") as info:
        configured("http://user:pw@host")
    assert "pw" not in str(info.value)


@needs_redis
def test_a_tampered_artifact_is_refused_and_never_loaded(monkeypatch):
    import torch

    cache = TeamCache(REDIS)
    name = cache.put(b"compiled kernels, honestly")
    assert cache.get(name) == b"compiled kernels, honestly"
    cache.client.set(PREFIX + name, b"something else")
    with pytest.raises(TamperedArtifact, match="does not match its hash"):
        cache.get(name)
    loaded = []
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", lambda blob: loaded.append(blob))
    note = load_into_torch(REDIS, name)
    assert note.startswith("refused:") and PASSWORD not in note and "***" in note
    assert loaded == []
    assert load_into_torch(REDIS, "0" * 64).startswith("missing:")


def host_search(tmp_path, model: str, host: str, study: str, db: str, remeasure: bool,
                space: dict = ONE_COMPILED) -> tuple[dict, str]:
    """``autotune search`` as one host of the team: its own local caches (autotune's, inductor's), the
    shared database and the shared Redis."""
    home = tmp_path / host
    env = {**os.environ, "AUTOTUNE_CACHE_DIR": str(home / "cache"), "AUTOTUNE_DATA_DIR": str(home / "data"),
           "AUTOTUNE_COMPILE_CACHE": REDIS}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    f = write_study(tmp_path, model, space, trials=1)
    cmd = [sys.executable, "-m", "autotune", "search", "--study-file", f, "--study", study, "--db", db, "--json",
           "--jobs", "1"] + (["--remeasure"] if remeasure else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(proc.stdout)
    (trial,) = [t for t in payload["trials"] if t["recipe"]["compile"]["target"] == space["compile.target"][0]]
    return trial, proc.stdout + proc.stderr


@needs_redis
def test_a_second_host_compiles_nothing_the_first_compiled(tmp_path, tiny_model):
    db = f"sqlite:///{tmp_path / 'team.db'}"
    first, out_a = host_search(tmp_path, tiny_model, "a", "team-a", db, remeasure=False)
    assert first["status"] == "ok" and first["graphs_built"] > 0 and first["compile_artifact"]
    second, out_b = host_search(tmp_path, tiny_model, "b", "team-b", db, remeasure=True)
    assert second["status"] == "ok"
    assert second["compile_shared"].startswith(f"loaded {first['compile_artifact'][:12]}")
    assert second["graphs_built"] == 0, "host b compiled a graph host a had compiled"
    for out in (out_a, out_b):
        assert PASSWORD not in out


@needs_redis
def test_a_second_host_builds_no_aotinductor_package_the_first_built(tmp_path, tiny_model):
    """torch.export and AOTInductor's compile are in no torch cache: the package travels itself, keyed by
    what makes it (not by its path, which hashes each host's model folder)."""
    db = f"sqlite:///{tmp_path / 'team.db'}"
    first, _ = host_search(tmp_path, tiny_model, "a", "aoti-a", db, remeasure=False, space=ONE_AOTI)
    assert first["status"] == "ok" and first["graphs_built"] > 0 and first["compile_artifact"]
    second, out_b = host_search(tmp_path, tiny_model, "b", "aoti-b", db, remeasure=True, space=ONE_AOTI)
    assert second["status"] == "ok", second
    assert second["compile_shared"].startswith(f"loaded {first['compile_artifact'][:12]}")
    assert "1 AOTInductor package" in second["compile_shared"]
    assert second["graphs_built"] == 0, "host b built a package host a had built"
    assert list((tmp_path / "b" / "cache" / "aoti").glob("*.pt2")), "the package was not written on host b"
    assert PASSWORD not in out_b
