"""Regional compilation: each decoder layer compiled alone, **one program shared by every layer**.

Compiling a whole decoder (30 layers of SmolLM2) costs inductor the same work 30 times: ~140 s on one
core of a 2-core Xeon before the first token. The layers are one class with the same shapes, so one
compiled layer serves all of them — if nothing in the traced region tells them apart. In
transformers' code the cache does: attention calls ``cache.update(k, v, self.layer_idx)``, which picks
``cache.layers[idx]`` — a guard on the index and a different tensor path per layer (one graph per
layer, then dynamo's recompile limit, then eager: PyTorch's own analysis is pytorch/pytorch#156520).
So the region is handed a :class:`LayerView` of the layer's own cache layer, which ignores the index.
What else a layer holds is baked into the program unguarded, so layers must be built alike
(:func:`structure`; checked when installed).

Weights are inputs of the region (dynamo inlines built-in modules), so the layers share its program
and the model's one copy of the weights. Only calls over a windowed static cache
(:mod:`.ladder`) take the compiled region: ``model.generate`` over a cache of its own (dynamic, or
static without windows) runs the layers as written. Measured on the Xeon (int8 weights, bf16,
envelope 2048): 26 s of warm-up instead of 137 s for the whole decoder, decode steps as fast
(``benchmarks/RESULTS.md``)."""
from __future__ import annotations

from ..errors import RecipeError
from .ladder import window_layer


class LayerView:
    """One cache layer, as the whole cache looks to a decoder layer's attention: ``update`` writes and
    reads that layer, whatever index attention passes."""

    __slots__ = ("layer",)

    def __init__(self, layer):
        self.layer = layer

    def update(self, key_states, value_states, layer_idx=None, *args, **kwargs):
        return self.layer.update(key_states, value_states, *args, **kwargs)


def decoder_layers(model):
    """The model's decoder layers (a ``ModuleList``) when they are alike (:func:`structure`), or a
    :class:`RecipeError` naming the model and what differs."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None or len(layers) == 0:
        raise RecipeError(f"compile.scope=layers: {type(model).__name__} has no list of decoder layers to compile "
                          "as one region (use compile.scope=model)")
    first = structure(layers[0])
    for index, layer in enumerate(layers):
        differs = sorted(set(structure(layer)) ^ set(first))
        if differs:
            raise RecipeError(f"compile.scope=layers: {type(model).__name__}'s decoder layer {index} is not built "
                              f"like layer 0 ({differs[0][0]} differs): one program cannot serve both (use "
                              "compile.scope=model)")
    return layers


def structure(layer) -> list[tuple]:
    """What a compiled layer bakes in, unguarded: each submodule's class and plain attributes (all but
    ``layer_idx``, which only picks the cache layer, handed in as a view), each weight's class, shape
    and dtype. Layers equal in it run one program correctly (a SmolLM3 layer without RoPE would not)."""
    import torch

    out = []
    for name, module in layer.named_modules():
        out.append((f"{name or 'layer'} class", type(module).__qualname__))
        for key, value in vars(module).items():
            if not key.startswith("_") and key != "layer_idx" and \
                    isinstance(value, (bool, int, float, str, tuple, type(None))):
                out.append((f"{name or 'layer'}.{key}", repr(value)))
    for name, param in list(layer.named_parameters()) + list(layer.named_buffers()):
        if isinstance(param, torch.Tensor):
            out.append((name, f"{type(param).__qualname__} {tuple(param.shape)} {param.dtype}"))
    return out


def layer_region(layer, hidden_states, attention_mask, position_embeddings, position_ids, view):
    """One decoder layer's pass over its own cache layer (what is compiled, once for every layer)."""
    return type(layer).forward(layer, hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                               cache=view, use_cache=True, position_embeddings=position_embeddings)


def prompt_region(layer, hidden_states, attention_mask, position_embeddings, position_ids, view):
    """The same pass for a prompt (a separate function: its own program, every prompt length one)."""
    return layer_region(layer, hidden_states, attention_mask, position_embeddings, position_ids, view)


class CompiledLayers:
    """Installs the compiled region on every decoder layer of ``model``: one-token passes over a
    windowed static cache layer run it; so do prompts when ``prompt`` (compiled for every length), else
    they run eager. ``calls`` counts the layer calls that took a compiled region."""

    def __init__(self, model, compile_options: dict | None = None, prompt: bool = False):
        import torch

        self.layers = decoder_layers(model)
        options = dict((compile_options or {}).get("options") or {})
        # the layers are one class with equal shapes: guarding on which module runs is 30 checks of its
        # weights' metadata per layer call (~180 us each on the Xeon, 5 ms of every token), never failing
        options["guard_filter_fn"] = torch.compiler.skip_guard_on_all_nn_modules_unsafe
        kwargs = {**(compile_options or {}), "options": options}
        self.step = torch.compile(layer_region, **kwargs)
        self.prompt = torch.compile(prompt_region, dynamic=True, **kwargs) if prompt else None
        self._views: dict[int, tuple[object, LayerView]] = {}
        self.calls = 0
        for index, layer in enumerate(self.layers):
            layer.forward = self._forward(layer, index, layer.forward)

    def _view(self, cache, index: int) -> LayerView:
        held = self._views.get(index)
        if held is None or held[0] is not cache.layers[index]:
            held = self._views[index] = (cache.layers[index], LayerView(cache.layers[index]))
        return held[1]

    def _forward(self, layer, index: int, plain):
        import torch

        def forward(hidden_states, attention_mask=None, position_ids=None, cache=None, use_cache=False,
                    position_embeddings=None, **kwargs):
            one_token = hidden_states.shape[1] == 1
            region = self.step if one_token else self.prompt
            if region is None or cache is None or kwargs or type(cache.layers[index]) is not window_layer():
                return plain(hidden_states, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                             use_cache=use_cache, position_embeddings=position_embeddings, **kwargs)
            if isinstance(attention_mask, torch.Tensor):  # its last size is the window's: one program for all
                torch._dynamo.maybe_mark_dynamic(attention_mask, attention_mask.dim() - 1)
            self.calls += 1
            return region(layer, hidden_states, attention_mask, position_embeddings, position_ids,
                          self._view(cache, index))

        return forward
