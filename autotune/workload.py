"""The workload a recipe is measured on: prompts, prompt length, new tokens, batch size."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib import resources

from .errors import UsageError


def shipped_text(name: str) -> str:
    return resources.files("autotune").joinpath("data", name).read_text(encoding="utf-8")


#: workload kinds: what the traffic looks like, so recipes are kept per kind. ``chat``: short free
#: prompts (the answer owes little to the input); ``summarize`` and ``code-edit``: a document, then
#: an instruction whose answer repeats much of it (where prompt lookup pays). Each kind's default
#: prompt length fits its prompts.
KINDS = {"chat": 32, "summarize": 256, "code-edit": 256}


def default_prompts(kind: str = "chat") -> tuple[str, ...]:
    """The shipped prompts of a kind: one a line for chat, documents separated by ``===`` lines."""
    if kind == "chat":
        return tuple(line for line in shipped_text("prompts.txt").splitlines() if line.strip())
    text = shipped_text(f"workloads/{kind}.txt")
    return tuple(p.strip("\n") for p in text.split("\n===\n") if p.strip())


@dataclass(frozen=True)
class Workload:
    """Every measured generate call has exactly ``batch_size`` x ``prompt_tokens`` input tokens and
    produces exactly ``new_tokens`` (``min_new_tokens == max_new_tokens``)."""

    prompt_tokens: int = 0  # 0: the kind's default (KINDS)
    new_tokens: int = 64
    batch_size: int = 1
    prompts: tuple[str, ...] = ()  # empty: the kind's shipped prompts
    kind: str = "chat"

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
        if not self.prompts:
            raise UsageError("workload needs at least one prompt")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prompts"] = list(self.prompts)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Workload":
        allowed = {"prompt_tokens", "new_tokens", "batch_size", "prompts", "kind"}
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
        return cls(**d)

    def check_fits(self, model, name: str = "the model") -> None:
        """A :class:`UsageError` when one call needs more positions than ``model`` (a
        :class:`~autotune.optimization.ModelInfo`) has: checked before any trial or row."""
        limit = model.max_positions
        needed = self.prompt_tokens + self.new_tokens
        if limit is not None and needed > limit:
            raise UsageError(f"the workload needs {needed} positions ({self.prompt_tokens} prompt + {self.new_tokens} "
                             f"new tokens) but {name} has {limit} (max_position_embeddings): give fewer "
                             "--prompt-tokens / --new-tokens")

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> str:
        kind = "" if self.kind == "chat" else f"{self.kind}, "
        return f"{kind}batch {self.batch_size}, {self.prompt_tokens} prompt tokens, {self.new_tokens} new tokens"

    def input_ids(self, tokenizer, vocab_size: int):
        """A ``[batch_size, prompt_tokens]`` tensor, one shape and no padding. Row ``i`` ends with
        shipped prompt ``i`` whole and is filled, in front, with the prompts before it (a
        conversation with its history), cut to the last ``prompt_tokens`` tokens — never one prompt
        repeated, which would hand the model a loop to continue (and prompt lookup a free win).
        Chat prompts go through the tokenizer's chat template when it has one (one user turn per
        prompt, the assistant's turn opened), as a chat model is served. Without a tokenizer
        (config-only models), deterministic pseudo-random ids."""
        import torch

        rows = []
        n = len(self.prompts)
        for i in range(self.batch_size):
            if tokenizer is None:
                g = torch.Generator().manual_seed(i)
                rows.append(torch.randint(0, vocab_size, (self.prompt_tokens,), generator=g))
                continue
            history = [self.prompts[(i - k) % n] for k in reversed(range(n))]  # prompt i last
            ids = self._encode(tokenizer, history)
            while len(ids) < self.prompt_tokens:  # a short prompt set: the history again, in front
                ids = ids + ids
            rows.append(torch.tensor(ids[-self.prompt_tokens:]))
        return torch.stack(rows)

    def _encode(self, tokenizer, history: list[str]) -> list[int]:
        if self.kind == "chat" and getattr(tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": p} for p in history]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "\n\n".join(history)
        return tokenizer(text, add_special_tokens=False)["input_ids"] or [0]
