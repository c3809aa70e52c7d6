"""torch's packed CPU int4 weights: quantized to the closest grid their bf16 scales hold
(:func:`closest_int4`), and unpacked for the prompt's pass (:class:`PackedInt4Linear`).

torch's CPU int4 matmul (``_weight_int4pack_mm_for_cpu``, what torchao's ``Int4OpaqueTensor`` calls)
is a decode kernel: it unpacks and scales the whole weight again for every block of four rows, so a
pass over many rows costs about a quarter of a decode step per row (SmolLM2-135M, 2-core Xeon: 1.0 s
of matmuls for a 512-token prompt where int8 took 0.17 s; 5-7 s of prompt pass at 1984 tokens).
Over many rows this module unpacks each weight once per call — its nibbles, scales and zero points,
to the activations' dtype, transposed as the bytes lie — and runs the dense matmul (AMX / AVX-512
bf16 where the CPU has them): 0.12-0.18 s of unpacking per call for the whole model, paid back
above ~128 rows.

The packed layout depends on the kernel torch dispatches to on this CPU (AVX-512: 64 output rows per
block, lanes 0 / 2 and 1 / 3 sharing bytes; AVX2: 32 rows, lanes 0 / 1; otherwise neighbouring rows
share a byte). Which one this process uses is not assumed: :func:`layout` packs a probe with torch's
own packer and keeps the layout that gives it back exactly, or none — then every pass keeps the
kernel. Compiled and exported programs (the decode step, the AOTInductor package) keep the kernel
too: they serve a few rows per step, and a branch on the rows would be a guard on a dynamic size."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

#: at and above this many rows a pass unpacks the weight (measured crossover on a 2-core Xeon: the
#: kernel took 101 / 253 / 466 ms over the model's 210 linears at 64 / 128 / 256 rows; unpacking them
#: all takes 120-180 ms, and the bf16 matmuls 36-52 ms at 128 rows)
MANY_ROWS = 128


#: each layout torch may pack in: output rows per block (the kernel's BLOCK_N) and where a byte's two
#: nibbles go. Each k of a block holds ``rows / 2`` bytes; "split": byte j's low nibble is row j, its
#: high nibble row ``rows / 2 + j`` (AVX-512: lanes 0 / 2 and 1 / 3 share bytes; AVX2: lanes 0 / 1);
#: "neighbours": byte j holds rows 2j and 2j + 1 (the kernel without vector instructions)
LAYOUTS = {"avx512": (64, "split"), "avx2": (32, "split"), "neighbours": (32, "neighbours")}


def _nibbles(packed: torch.Tensor, n: int, k: int, name: str, out: torch.Tensor) -> torch.Tensor:
    """The 4-bit values of an ``[n, k]`` weight packed in layout ``name``, written transposed into
    ``out`` (``[k, n]``, any dtype) so that its rows follow the packed bytes' order."""
    rows, how = LAYOUTS[name]
    b = packed.reshape(n // rows, k, rows // 2)
    view = out.view(k, n // rows, 2, rows // 2) if how == "split" else out.view(k, n // rows, rows // 2, 2)
    for nibble, values in enumerate((b & 15, b >> 4)):
        dest = view[:, :, nibble] if how == "split" else view[..., nibble]
        dest.copy_(values.permute(1, 0, 2))
    return out


@functools.lru_cache(maxsize=1)
def layout() -> str | None:
    """The layout torch packs int4 weights in on this CPU, found by packing a probe (two blocks of
    the widest layout) and unpacking it; ``None`` where no decoder gives it back exactly."""
    generator = torch.Generator().manual_seed(0)
    probe = torch.randint(0, 16, (128, 64), dtype=torch.int32, generator=generator)
    try:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe, 1)
    except (RuntimeError, AttributeError):
        return None
    for name in LAYOUTS:
        if torch.equal(_nibbles(packed, 128, 64, name, torch.empty(64, 128, dtype=torch.int32)).t(), probe):
            return name
    return None


def unpack(weight, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` (an ``Int4OpaqueTensor`` for which :func:`unpack_ready` holds) as a dense matrix of
    ``dtype``, transposed (``[in, out]``: no transpose is copied, the matmul reads it as it is), valued
    as the kernel computes it (``(q - 8) * scale + zero`` in float, one rounding to ``dtype``)."""
    n, k = weight.shape
    group = weight.block_size[-1]
    dense = _nibbles(weight.qdata, n, k, layout(), torch.empty(k, n, dtype=torch.float32))
    scale_zero = weight.scale_and_zero.float()  # [groups, out, (scale, zero)]
    scale = scale_zero[..., 0].unsqueeze(1)
    zero = (scale_zero[..., 1] - 8 * scale_zero[..., 0]).unsqueeze(1)
    grouped = dense.view(k // group, group, n)
    torch.addcmul(zero, grouped, scale, out=grouped)
    return dense.to(dtype)


class PackedInt4Linear(torch.nn.Linear):
    """A linear over an ``Int4OpaqueTensor`` weight this process's layout decodes (only such a linear
    becomes one): torch's kernel for a few rows, the weight unpacked once for many (the prompt's pass).
    Same parameters and names as the linear it was."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        traced = torch.compiler.is_compiling() or torch.compiler.is_exporting()
        if not traced and x.numel() >= MANY_ROWS * x.shape[-1]:
            return F.linear(x, unpack(self.weight, x.dtype).t(), self.bias)
        return super().forward(x)


def serve_prompts_unpacked(model: torch.nn.Module) -> int:
    """Every linear of ``model`` whose weight is torch's packed CPU int4 (and whose shape the layout
    decodes) unpacks it for passes over many rows; returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and unpack_ready(module.weight):
            module.__class__ = PackedInt4Linear
            count += 1
    return count


def unpack_ready(weight) -> bool:
    """Whether ``weight`` is torch's packed CPU int4 (not DA8W4's own packing) in a shape this
    process's layout decodes (whole blocks of output rows, whole groups of inputs)."""
    try:
        from torchao.prototype.quantization.int4 import Int4OpaqueTensor
    except ImportError:
        return False
    if not isinstance(weight, Int4OpaqueTensor) or getattr(weight, "act_mapping_type", None) is not None:
        return False
    name = layout()
    return name is not None and weight.shape[0] % LAYOUTS[name][0] == 0 and weight.shape[1] % weight.block_size[-1] == 0


# -- quantizing: the closest int4 grid the kernel's bf16 scales and zero points can hold ----------------
def closest_int4(weight: torch.Tensor, group: int):
    """``weight`` (``[out, in]``) as torch's packed CPU int4 with one scale and zero point per
    ``group`` inputs, each group's min..max in 15 steps as torchao's tinygemm choice has it — but the
    step and zero point computed in float, the zero point from the unrounded step, each rounded once
    to the weight's dtype, and every value put on the nearest level of that rounded grid. torchao
    computes both in the weight's dtype (bf16), the zero point from the already rounded step: on
    SmolLM2's weights (Q4_1 de-quantized: exactly 16 levels per group of 32) its error is 0.6% of
    the weights' norm, this one's 0.2% (bf16's own rounding: 0.13%)."""
    from torchao.prototype.quantization.int4 import Int4OpaqueTensor

    n, k = weight.shape
    grouped = weight.detach().float().view(n, k // group, group)
    low, high = grouped.amin(-1, keepdim=True), grouped.amax(-1, keepdim=True)
    step = ((high - low) / 15).clamp(min=1e-6)
    scale, zero = step.to(weight.dtype), (low + 8 * step).to(weight.dtype)
    q = ((grouped - zero.float()) / scale.float() + 8).round().clamp(0, 15).to(torch.int32).view(n, k)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    scale_zero = torch.stack((scale.view(n, -1), zero.view(n, -1)), -1).transpose(0, 1).contiguous()
    return Int4OpaqueTensor(qdata=packed, scale_and_zero=scale_zero, block_size=[1, group], shape=weight.shape)


@functools.lru_cache(maxsize=1)
def _closest_config_type():
    """torchao's CPU int4 weight-only config with :func:`closest_int4` as its quantizer (registered
    with torchao's ``quantize_``, which ``TorchAoConfig`` calls while loading)."""
    import types

    from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig
    from torchao.quantization.quant_api import _linear_extra_repr
    from torchao.quantization.transform_module import register_quantize_module_handler

    class ClosestInt4WeightOnlyConfig(PrototypeInt4WeightOnlyConfig):
        pass

    @register_quantize_module_handler(ClosestInt4WeightOnlyConfig)
    def _quantize(module, config):
        if config.set_inductor_config:  # as torchao's own handler does
            from torchao.quantization.utils import recommended_inductor_config_setter

            recommended_inductor_config_setter()
        if module.weight.shape[-1] % config.group_size:  # as torchao: left in its float dtype
            return module
        module.weight = torch.nn.Parameter(closest_int4(module.weight, config.group_size), requires_grad=False)
        module.extra_repr = types.MethodType(_linear_extra_repr, module)
        return module

    return ClosestInt4WeightOnlyConfig


def closest_config(group: int):
    """The torchao config that quantizes CPU linears with :func:`closest_int4` (for ``TorchAoConfig``
    and ``quantize_``)."""
    return _closest_config_type()(group_size=group)
