"""The decode loop over AOTInductor programs: the model over its static cache, exported once with
``torch.export`` (the query length dynamic, so the prompt's pass and every token's step are one
program; the window's length dynamic, so every rung of the ladder is too; and the rows, so a one-row
call runs one row, not ``max_batch`` of them) and compiled ahead of time into a package cached on disk
per model, recipe, ``max_batch``, cache length, hardware and library versions — driven with no dynamo
guards or Python wrapper between the tokens
(the CPU's answer to CUDA graphs; measured on a 2-core EPYC, the compiled decode step spent ~5 of
its 12 ms per token in guards and the wrapper). The prompt's pass runs eager, as the decode loop's
does (:meth:`DecodeLoop.prefill`): a long prompt through the program took 9x as long.

Packages hold no weights (``package_constants_in_so=False``): each loaded program is handed the
model's own tensors (``load_constants(..., user_managed=True)``), so a ladder of programs shares the
model's one copy of its weights instead of multiplying it."""
from __future__ import annotations

import hashlib
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

from .decode import DecodeLoop, Rows, prompt_pass
from .ladder import CacheLadder, cache_kwarg

#: bump when what a package holds changes: older packages are then compiled again
PACKAGE_FORMAT = "6"  # 3: one program for every rung (the window dynamic); 4: and every batch width;
#: 5: a step writes the cache in place (4 copied the rows' whole cache twice per layer)
#: 6: the constants inductor's lowerings make kept beside the package (int4 packages could not load)


def _module(model, cache):
    """The model over ``cache`` as an exportable module: the cache's tensors are its buffers, and its
    forward takes the tokens, their positions, the mask over the slots the call's window reads (its
    length is the window's), and the first slot they are written to; it returns the last position's
    logits, ``[batch, vocab]``."""
    from .ladder import window_layer

    windowed_layer = window_layer()
    import torch

    class OverStaticCache(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.cache, self.cache_kw = model, cache, cache_kwarg(model)
            for i, layer in enumerate(cache.layers):
                self.register_buffer(f"key_cache_{i}", layer.keys, persistent=False)
                self.register_buffer(f"value_cache_{i}", layer.values, persistent=False)
                self.register_buffer(f"cumulative_length_{i}", layer.cumulative_length, persistent=False)

        def forward(self, input_ids, position_ids, attention_mask, cache_position):
            for i, layer in enumerate(self.cache.layers):
                # the layers read the module's buffers: non-strict export traces those, not the tensors
                # the layers hold (it lifted those as constants, and the cache writes were lost)
                layer.keys, layer.values = getattr(self, f"key_cache_{i}"), getattr(self, f"value_cache_{i}")
                layer.cumulative_length = getattr(self, f"cumulative_length_{i}")
                layer.cumulative_length.copy_(cache_position[0])
                if type(layer) is windowed_layer:
                    layer.span = attention_mask[0]
            out = self.model(input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=True,
                             logits_to_keep=1, **{self.cache_kw: self.cache})
            return out.logits[:, -1]

    return OverStaticCache()


#: packages the team compile cache brought (:mod:`autotune.compile_share`), by :func:`share_key`: the
#: package's bytes and its constants' (or None). A program not on disk is written from here, not compiled
SHARED: dict[str, tuple[bytes, bytes | None]] = {}
#: the packages this process loaded (compiled, found on disk or brought), by :func:`share_key`: what a
#: trial gives the team compile cache after its warm-up
USED: dict[str, Path] = {}


def share_key(batch: int, slots: int, device) -> str:
    """What a package is among one recipe's, model's, hardware class's and versions' (the team cache's
    artifact is named for those): its format, rows, cache size and device. The path on disk is not it:
    it hashes the model's folder, which differs from host to host."""
    return f"{PACKAGE_FORMAT}/{batch}/{slots}/{device}"


def write_package(path: Path, package: bytes, constants: bytes | None) -> None:
    """A package brought by the team cache, at ``path``: whole or not at all, its constants before it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, data in ((constants_path(path), constants), (path, package)):
        if data is None:
            continue
        tmp = target.with_name(f".{os.getpid()}-{target.name}")
        tmp.write_bytes(data)
        os.replace(tmp, target)


def package_path(model, identity: dict, batch: int, slots: int) -> Path:
    """Where the program for this model (``identity``: recipe, hardware, versions), batch (the most rows
    it serves) and cache size is kept."""
    from ..paths import cache_dir
    from ..sources import ModelSource

    where = str(getattr(model.config, "_name_or_path", "") or "")
    model_id = ModelSource(where, where).fingerprint if Path(where).is_dir() else model.config.to_json_string()
    raw = json.dumps({"format": PACKAGE_FORMAT, "model": model_id, **identity, "batch": batch, "slots": slots,
                      "device": str(model.device)}, sort_keys=True, default=str)
    return cache_dir() / "aoti" / f"{hashlib.sha256(raw.encode()).hexdigest()[:24]}.pt2"


def export_program(module, batch: int, slots: int, window: int, device, any_rows: bool = False):
    """``module`` exported: the query length dynamic; the window too, up to the cache's ``slots``, traced
    at ``window``; the rows ``batch``, or with ``any_rows`` from 1 to ``batch``, over a cache of more."""
    import torch

    seq = torch.export.Dim("seq", min=1, max=slots - 1)
    # no window is the whole cache (:class:`CacheLadder` keeps a slot beyond the largest): the slice of a
    # part of the cache is never the cache itself, which non-strict export would otherwise have to guard
    span = torch.export.Dim("window", min=2, max=slots - 1) if window < slots else None
    rows = torch.export.Dim("rows", min=1, max=batch) if any_rows and batch > 1 else None
    example = min(4, window - 1)
    kwargs = {"input_ids": torch.zeros(batch, example, dtype=torch.long, device=device),
              "position_ids": torch.arange(example, device=device).expand(batch, -1).contiguous(),
              "attention_mask": torch.ones(batch, window, dtype=torch.long, device=device),
              "cache_position": torch.arange(example, device=device)}
    # traced outside inference mode (the trial runs in it): torchao's weights, and the cache buffers
    # export mutates, cannot be inference tensors there. Non-strict: strict export (dynamo) took 25 of a
    # package's 80 s, this 8 (Xeon)
    held = [(layer, layer.keys, layer.values, layer.cumulative_length) for layer in module.cache.layers]
    try:
        with torch.inference_mode(False), torch.no_grad():
            return torch.export.export(module, args=(), kwargs=kwargs, strict=False,
                                       dynamic_shapes={"input_ids": {0: rows, 1: seq},
                                                       "position_ids": {0: rows, 1: seq},
                                                       "attention_mask": {0: rows, 1: span},
                                                       "cache_position": {0: seq}})
    finally:  # tracing left the layers its stand-ins for the buffers
        for layer, keys, values, length in held:
            layer.keys, layer.values, layer.cumulative_length = keys, values, length


def compile_package(module, batch: int, slots: int, window: int, device, options: dict, path: Path,
                    any_rows: bool = False) -> None:
    """:func:`export_program` compiled into a package at ``path``, whole or not at all (another trial
    may be reading it)."""
    import torch

    program = export_program(module, batch, slots, window, device, any_rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{os.getpid()}-{path.name}")
    tmp_made = constants_path(tmp)
    made: dict = {}
    try:
        with torch.inference_mode(False), torch.no_grad(), _lowering_constants(made):
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(tmp),
                inductor_configs={**options, "aot_inductor.package_constants_in_so": False})
        if made:  # beside the package, and before it: a package on disk always finds its constants
            torch.save(made, tmp_made)
            os.replace(tmp_made, constants_path(path))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_made.unlink(missing_ok=True)
        _forget_export_proxies()


def _forget_export_proxies() -> None:
    """torch (2.13) keeps the last export's proxies, by fake tensor id, in a module-level map, and with
    them the traced graph: in a process that compiled the 135M model's int4 package, 1157 MB resident
    where clearing it left 1008 (a process that loads the package: 714; Xeon). A trial's memory figure,
    and a server that compiles its own package, carried it."""
    from torch.fx.experimental import proxy_tensor

    getattr(proxy_tensor, "_FAKE_TENSOR_ID_TO_PROXY_MAP_FOR_EXPORT", {}).clear()


def constants_path(package: Path) -> Path:
    """Where the constants inductor's lowerings made for ``package`` are kept (see :func:`_lowering_constants`)."""
    return package.with_suffix(".constants.pt")


@contextmanager
def _lowering_constants(made: dict):
    """Records the tensors inductor's lowerings add to the program while compiling, by the names the
    package asks for them. They are not the model's, so with the weights left out of the package
    nothing would hand them over at load: torch's CPU int4 matmul takes its group size as a scalar
    tensor the lowering makes (``constant782``), and a package compiled for int4 weights failed to load."""
    from torch._inductor.graph import GraphLowering

    original = GraphLowering.add_tensor_constant

    def add_tensor_constant(self, data, name=None):
        box = original(self, data, name)
        if name is None:  # the model's tensors come named; a lowering's do not
            made[box.get_name()] = data.detach().clone()
        return box

    GraphLowering.add_tensor_constant = add_tensor_constant
    try:
        yield
    finally:
        GraphLowering.add_tensor_constant = original


def constants_of(module, fqns: list[str], made: dict | None = None) -> dict:
    """The module's tensors by the names a package asks for: parameters and buffers by name, and a
    tensor subclass's inner tensors (torchao's quantized weights, which export unwraps as
    ``<owner>.parametrizations.<name>.original<k>``) in its ``__tensor_flatten__`` order; ``made``: the
    ones inductor's lowerings made (:func:`_lowering_constants`)."""
    named = {**(made or {}), **dict(module.named_parameters(remove_duplicate=False)),
             **dict(module.named_buffers(remove_duplicate=False))}
    out = {}
    for fqn in fqns:
        if fqn in named:
            out[fqn] = named[fqn]
            continue
        unwrapped = re.match(r"(.*)\.parametrizations\.(\w+)\.original(\d+)$", fqn)
        if unwrapped is None:
            raise KeyError(f"the package asks for a constant the model does not have: {fqn}")
        tensor = getattr(module.get_submodule(unwrapped.group(1)), unwrapped.group(2))
        names, _ = tensor.__tensor_flatten__()
        out[fqn] = getattr(tensor, names[int(unwrapped.group(3))])
    return out


class AheadOfTimeLoop(DecodeLoop):
    """The decode loop with each rung's passes run by its AOTInductor program (see the module).
    ``identity``: what besides the model and shape makes a program (recipe, hardware, versions)."""

    name = "compile.target=aoti"
    #: packages this process compiled (a test counts them: steady state compiles none)
    compiled_packages = 0

    def __init__(self, model, ladder: CacheLadder, compile_options: dict | None, identity: dict):
        self.ladder, self.options, self.identity = ladder, dict(compile_options or {}), identity
        self.cache_kw = cache_kwarg(model)
        self.programs: dict[tuple[int, int], object] = {}
        # the prompt's pass runs eager over the same cache (the program reads the slot it is handed, not
        # what the pass left): over the real rows and a window of the prompt alone. Through the program it
        # ran every max_batch row over the rung's masked window: 8.4 s for a 1984-token prompt, 0.9 s eager
        self.eager_prompt, self.prompt_pass = True, prompt_pass

    def rows_for(self, real: int) -> int:
        """The call's real rows, where the cache's layers are windowed static ones (the program takes the
        rows as a dynamic size and reads and writes the first ones: a one-row call under ``max_batch`` 2
        no longer computes a copy of its row in every step); else every ``max_batch`` row, as the decode
        loop does."""
        return real if self.ladder.windowable else self.ladder.envelope.max_batch

    def cache_rows(self) -> int:
        """One row beyond ``max_batch`` where the rows are a dynamic size. torch.export (2.13) elides a
        slice that can be the whole tensor: ``keys[:rows]`` traced at ``rows == len(keys)`` became all of
        ``keys``, so a one-row call's step wrote past its input into the second row. With a spare row no
        slice is ever the whole cache, and the slice stays in the program."""
        most = self.ladder.envelope.max_batch
        return most + 1 if self.ladder.windowable and most > 1 else most

    def program(self, model, rows: Rows):
        """The program for the call: one for every rung and batch width of a windowed cache; else one per
        rung."""
        window = rows.mask.shape[1]
        key = "any" if self.ladder.windowable else window
        if key not in self.programs:
            self.programs[key] = self._load(model, rows.cache, window)
        return self.programs[key]

    def _load(self, model, cache, window: int):
        import torch

        batch, slots = self.ladder.envelope.max_batch, cache.layers[0].max_cache_len
        module = _module(model, cache)
        path = package_path(model, self.identity, batch, slots)
        key = share_key(batch, slots, model.device)
        if not path.exists() and key in SHARED:
            write_package(path, *SHARED[key])
        if not path.exists():
            try:
                compile_package(module, batch, slots, window, model.device, self.options, path,
                                any_rows=self.ladder.windowable)
            finally:
                self.ladder.set_window(cache, window)  # tracing left the layers a traced span
            AheadOfTimeLoop.compiled_packages += 1
        USED[key] = path
        runner = torch._inductor.aoti_load_package(str(path))
        made = torch.load(constants_path(path)) if constants_path(path).exists() else {}
        runner.load_constants(constants_of(module, runner.get_constant_fqns(), made), check_full_update=True,
                              user_managed=True)
        return runner

    def step(self, model, token, rows: Rows):
        return self.program(model, rows)(input_ids=token, position_ids=rows.next_positions,
                                         attention_mask=rows.mask, cache_position=rows.slot)
