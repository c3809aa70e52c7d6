"""torch's CPU int4 weights over many rows (the prompt's pass) are unpacked once per call instead of
going through the decode kernel once per four rows: the layout is decoded exactly on every kernel
torch may dispatch to, the pass gives what the kernel gives, and few rows keep the kernel."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from autotune.apply import apply_recipe
from autotune.engines import int4
from autotune.optimization import ApplyContext, unavailable_for
from autotune.recipe import resolve
from autotune.registry import get_optimizations
from autotune.target import current_target

pytestmark = pytest.mark.filterwarnings("ignore")

DECODE_PROBE = """
import torch
from autotune.engines import int4
name = int4.layout()
n = 3 * int4.LAYOUTS[name][0]
q = torch.randint(0, 16, (n, 96), dtype=torch.int32)
packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
got = int4._nibbles(packed, n, 96, name, torch.empty(96, n, dtype=torch.int32)).t()
print(torch.backends.cpu.get_cpu_capability(), name, torch.equal(got, q))
"""

#: torch's CPU capability (ATEN_CPU_CAPABILITY) and the layout its int4 packer writes
EXPECTED = {"default": "neighbours", "avx2": "avx2", "avx512": "avx512"}


@pytest.mark.parametrize("capability", list(EXPECTED))
def test_the_packed_layout_is_decoded_exactly_on_every_kernel_torch_dispatches_to(capability):
    """Each CPU kernel torch may pick packs int4 differently; the probe finds which one this process
    got and its decoder gives torch's packing back bit for bit."""
    flags = current_target("cpu").cpu_flags
    if capability == "avx512" and "avx512f" not in flags or capability == "avx2" and "avx2" not in flags:
        pytest.skip(f"this CPU has no {capability}")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    out = subprocess.run([sys.executable, "-c", DECODE_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got, name, exact = out.stdout.split()
    assert got.lower() == capability and name == EXPECTED[capability] and exact == "True"


class CountInt4Kernel(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._weight_int4pack_mm_for_cpu.default:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def test_a_long_prompt_unpacks_int4_weights_and_gets_the_kernels_answer(tiny_model, monkeypatch):
    """Over 200 rows every decodable int4 linear unpacks its weight (the kernel runs only for those
    the layout cannot decode) and the logits are the kernel's up to bf16 rounding; over 8 rows every
    linear keeps the kernel."""
    opts = get_optimizations()
    why = unavailable_for(opts["quantization"], current_target("cpu"), None).get("method=torchao-int4-weight")
    if why:
        pytest.skip(why)
    recipe = resolve({"quantization": {"method": "torchao-int4-weight", "group_size": 32},
                      "dtype": {"dtype": "bfloat16"}}, opts)
    model = apply_recipe(tiny_model, opts, recipe, ApplyContext(current_target("cpu"), "cpu", 8, 8, 1, recipe)).model
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and type(m.weight).__name__ == "Int4OpaqueTensor"]
    unpacked = [m for m in linears if isinstance(m, int4.PackedInt4Linear)]
    assert unpacked, "no int4 linear of the tiny model unpacks for the prompt's pass"
    ids = torch.randint(5, 300, (1, 200), generator=torch.Generator().manual_seed(0))

    def run(rows):
        counter = CountInt4Kernel()
        with torch.no_grad(), counter:
            logits = model(rows).logits.float()
        return logits, counter.calls

    logits, calls = run(ids)
    assert calls == len(linears) - len(unpacked)
    monkeypatch.setattr(int4, "MANY_ROWS", 10**9)  # the kernel alone, as before
    kernel, calls = run(ids)
    assert calls == len(linears)
    assert torch.allclose(logits, kernel, atol=0.05 * kernel.abs().max().item()), (logits - kernel).abs().max()
    monkeypatch.undo()
    assert run(ids[:, :8])[1] == len(linears)


def test_int4_quantizes_to_the_closest_grid_its_bf16_scales_can_hold():
    """Weights with 16 levels per group of 32 (a de-quantized Q4_1 checkpoint, as the embedded model's)
    come back within bf16's own rounding, well inside torchao's own choice (its step and zero point
    computed in bf16, the zero point from the rounded step)."""
    pytest.importorskip("torchao")
    if int4.layout() is None:
        pytest.skip("torch packs int4 in no layout this CPU's kernel decodes")
    from torchao.prototype.quantization.int4 import Int4OpaqueTensor

    generator = torch.Generator().manual_seed(0)
    n, k = 128, 256
    step = torch.rand(n, k // 32, 1, generator=generator) * 0.01 + 0.002
    low = -step * (7.5 + torch.randn(n, k // 32, 1, generator=generator))  # centred, as trained weights are
    levels = torch.randint(0, 16, (n, k // 32, 32), generator=generator)
    levels[..., 0], levels[..., 1] = 0, 15  # every group spans its whole grid, as Q4_1's do
    exact = (levels * step + low).view(n, k)
    loaded = exact.to(torch.bfloat16)  # as the model loads in bf16

    def error(weight):
        return ((int4.unpack(weight, torch.float32).t() - exact).norm() / exact.norm()).item()

    ours = error(int4.closest_int4(loaded, 32))
    theirs = error(Int4OpaqueTensor.from_hp(loaded, [1, 32]))
    rounding = ((loaded.float() - exact).norm() / exact.norm()).item()
    assert ours < 0.65 * theirs and ours < 2 * rounding, (ours, theirs, rounding)
