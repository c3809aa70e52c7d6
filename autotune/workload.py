"""The workload a recipe is measured on and served for: its typical call (prompts, prompt length, new
tokens, batch size) and its serving envelope — the most positions one call may need
(``max_context``), the most rows (``max_batch``), and how tokens are chosen (``sampling``).

A figure is a claim about what will be served, so a trial times calls over the envelope
(:meth:`Workload.shapes`: the typical call, a long prompt, one near ``max_context``), and a recipe
serves every call of its envelope or none."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from importlib import resources

from .errors import UsageError


def shipped_text(name: str) -> str:
    return resources.files("autotune").joinpath("data", name).read_text(encoding="utf-8")


#: workload kinds: what the traffic looks like, so recipes are kept per kind. ``chat``: short free
#: prompts (the answer owes little to the input); ``summarize`` and ``code-edit``: a document, then
#: an instruction whose answer repeats much of it (where prompt lookup pays). Each kind's default
#: prompt length fits its prompts.
KINDS = {"chat": 32, "summarize": 256, "code-edit": 256}
#: the share of max_context a kind's long call fills with its prompt (chat: a long conversation now
#: and then; summarize / code-edit: long documents are the point)
LONG_SHARE = {"chat": 0.25, "summarize": 0.5, "code-edit": 0.5}
#: max_context when none is given (capped by the model's positions)
DEFAULT_MAX_CONTEXT = 2048
#: what ``sampling`` may set, and what each must be (transformers' generate arguments)
SAMPLING = {"temperature": (float, lambda v: v > 0, "a number above 0"),
            "top_p": (float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
            "top_k": (int, lambda v: v >= 1, "a whole number of at least 1"),
            "min_p": (float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
            "repetition_penalty": (float, lambda v: v > 0, "a number above 0")}


def parse_sampling(text) -> dict:
    """``"temperature=0.7,top_p=0.9"`` (or a mapping) as generate's sampling arguments; ``""``,
    ``"greedy"`` or nothing: greedy. Every problem is a one-line :class:`UsageError`."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "greedy")):
        return {}
    if isinstance(text, (tuple, list)):
        text = dict(text)
    if isinstance(text, str):
        pairs = {}
        for item in text.split(","):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"--sampling takes name=value pairs (e.g. temperature=0.7,top_p=0.9), got {item!r}")
            pairs[key.strip()] = value.strip()
        text = pairs
    if not isinstance(text, dict):
        raise UsageError(f"sampling must be a table of generate arguments or \"greedy\", got {text!r}")
    out = {}
    for key, value in text.items():
        if key not in SAMPLING:
            raise UsageError(f"sampling takes {', '.join(SAMPLING)}; unknown: {key}")
        kind, ok, wanted = SAMPLING[key]
        try:
            number = kind(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or (kind is int and str(value).strip() not in (str(number), f"{number}.0")) or not ok(number):
            raise UsageError(f"sampling {key} must be {wanted}, got {value!r}")
        out[key] = number
    return out


def default_prompts(kind: str = "chat") -> tuple[str, ...]:
    """The shipped prompts of a kind: one a line for chat, documents separated by ``===`` lines."""
    if kind == "chat":
        return tuple(line for line in shipped_text("prompts.txt").splitlines() if line.strip())
    text = shipped_text(f"workloads/{kind}.txt")
    return tuple(p.strip("\n") for p in text.split("\n===\n") if p.strip())


@dataclass(frozen=True)
class Workload:
    """The typical call has exactly ``batch_size`` x ``prompt_tokens`` input tokens and produces exactly
    ``new_tokens`` (``min_new_tokens == max_new_tokens``). The envelope: ``max_context`` (0: just the
    typical call — how workloads were stored before envelopes; a search resolves it with
    :meth:`for_model`), ``max_batch`` (0: ``batch_size``), ``sampling`` (empty: greedy)."""

    prompt_tokens: int = 0  # 0: the kind's default (KINDS)
    new_tokens: int = 64
    batch_size: int = 1
    prompts: tuple[str, ...] = ()  # empty: the kind's shipped prompts
    kind: str = "chat"
    max_context: int = 0
    max_batch: int = 0
    sampling: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UsageError(f"unknown workload kind {self.kind!r}; choose from {', '.join(KINDS)}")
        if self.prompt_tokens == 0:
            object.__setattr__(self, "prompt_tokens", KINDS[self.kind])
        if self.prompts == ():
            object.__setattr__(self, "prompts", default_prompts(self.kind))
        for name in ("prompt_tokens", "new_tokens", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"workload {name} must be a positive integer, got {value!r}")
        for name in ("max_context", "max_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise UsageError(f"workload {name} must be a positive integer, got {value!r}")
        if not self.prompts:
            raise UsageError("workload needs at least one prompt")
        sampling = self.sampling if isinstance(self.sampling, tuple) else tuple(parse_sampling(self.sampling).items())
        object.__setattr__(self, "sampling", tuple(sorted(parse_sampling(dict(sampling)).items())))
        if self.max_context and self.max_context < self.prompt_tokens + self.new_tokens:
            raise UsageError(f"workload max_context {self.max_context} is shorter than its typical call "
                             f"({self.prompt_tokens} prompt + {self.new_tokens} new tokens)")
        if self.max_batch and self.max_batch < self.batch_size:
            raise UsageError(f"workload max_batch {self.max_batch} is smaller than its batch_size {self.batch_size}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prompts"] = list(self.prompts)
        d["sampling"] = dict(self.sampling)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Workload":
        allowed = {f.name for f in fields(cls)}
        unknown = set(d) - allowed
        if unknown:
            raise UsageError(f"unknown workload field(s): {', '.join(sorted(unknown))}")
        d = dict(d)
        if "prompts" in d:
            if not isinstance(d["prompts"], (list, tuple)) or not all(isinstance(p, str) for p in d["prompts"]):
                raise UsageError("workload prompts must be a list of strings")
            d["prompts"] = tuple(d["prompts"]) or ()
            if not d["prompts"]:
                raise UsageError("workload needs at least one prompt")
        if "sampling" in d:
            d["sampling"] = tuple(parse_sampling(d["sampling"]).items())
        return cls(**d)

    def for_model(self, model, name: str = "the model") -> "Workload":
        """This workload with its envelope resolved for ``model`` (an
        :class:`~autotune.optimization.ModelInfo`): ``max_context`` defaults to
        :data:`DEFAULT_MAX_CONTEXT` capped by the model's positions, ``max_batch`` to ``batch_size``.
        A :class:`UsageError`, before any trial or row, when a call would need more positions than
        the model has."""
        limit = model.max_positions
        needed = self.prompt_tokens + self.new_tokens
        if limit is not None and needed > limit:
            raise UsageError(f"the workload needs {needed} positions ({self.prompt_tokens} prompt + {self.new_tokens} "
                             f"new tokens) but {name} has {limit} (max_position_embeddings): give fewer "
                             "--prompt-tokens / --new-tokens")
        if limit is not None and self.max_context > limit:
            raise UsageError(f"workload max_context {self.max_context} is more than {name} has positions ({limit}, "
                             "max_position_embeddings)")
        context = self.max_context or max(needed, min(DEFAULT_MAX_CONTEXT, limit or DEFAULT_MAX_CONTEXT))
        return replace(self, max_context=context, max_batch=self.max_batch or self.batch_size)

    def shapes(self) -> list[tuple[int, int]]:
        """``(prompt tokens, new tokens)`` of the calls a trial times, the typical call first: then a
        long prompt (the kind's :data:`LONG_SHARE` of ``max_context``) and one near ``max_context``
        that leaves room for the answer — each only when longer than the one before. Just the
        typical call when ``max_context`` is 0."""
        out = [(self.prompt_tokens, self.new_tokens)]
        if not self.max_context:
            return out
        room = self.max_context - self.new_tokens
        for prompt in (int(LONG_SHARE[self.kind] * self.max_context), room):
            if out[-1][0] < prompt <= room:
                out.append((prompt, self.new_tokens))
        return out

    def generate_kwargs(self) -> dict:
        """What every timed call passes to generate for the envelope's token choice: sampling, or
        nothing (greedy)."""
        return {"do_sample": True, **dict(self.sampling)} if self.sampling else {}

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> str:
        kind = "" if self.kind == "chat" else f"{self.kind}, "
        typical = f"{kind}batch {self.batch_size}, {self.prompt_tokens} prompt tokens, {self.new_tokens} new tokens"
        if not self.max_context:
            return typical
        sampling = ", ".join(f"{k}={v:g}" for k, v in self.sampling) or "greedy"
        return (f"{typical}; envelope: up to {self.max_context} positions, batch up to {self.max_batch}, {sampling} "
                f"(timed: {', '.join(f'{p}+{n}' for p, n in self.shapes())})")

    def input_ids(self, tokenizer, vocab_size: int, prompt_tokens: int | None = None, batch: int | None = None):
        """A ``[batch, prompt_tokens]`` tensor (the typical call's by default), one shape and no
        padding. Row ``i`` ends with shipped prompt ``i`` whole and is filled, in front, with the
        prompts before it (a conversation with its history) and, for a long call, the shipped
        documents before those (what a long conversation pasted earlier), cut to the last
        ``prompt_tokens`` tokens — never one prompt repeated, which would hand the model a loop to
        continue (and prompt lookup a free win). Chat prompts go through the tokenizer's chat
        template when it has one (one user turn per text, the assistant's turn opened), as a chat
        model is served. Without a tokenizer (config-only models), deterministic pseudo-random ids."""
        import torch

        length, batch = prompt_tokens or self.prompt_tokens, batch or self.batch_size
        rows = []
        n = len(self.prompts)
        for i in range(batch):
            if tokenizer is None:
                g = torch.Generator().manual_seed(i)
                rows.append(torch.randint(0, vocab_size, (length,), generator=g))
                continue
            history = [self.prompts[(i - k) % n] for k in reversed(range(n))]  # prompt i last
            ids = self._encode(tokenizer, history)
            if len(ids) < length:  # a long call: the documents first
                ids = self._encode(tokenizer, list(_documents()) + history)
            while len(ids) < length:  # longer still: the whole again, in front
                ids = ids + ids
            rows.append(torch.tensor(ids[-length:]))
        return torch.stack(rows)

    def _encode(self, tokenizer, history: list[str]) -> list[int]:
        if self.kind == "chat" and getattr(tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": p} for p in history]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "\n\n".join(history)
        return tokenizer(text, add_special_tokens=False)["input_ids"] or [0]


def _documents() -> tuple[str, ...]:
    """Every shipped text that is not a chat prompt: the long calls' earlier context."""
    return (shipped_text("reference.txt"), *default_prompts("summarize"), *default_prompts("code-edit"))
