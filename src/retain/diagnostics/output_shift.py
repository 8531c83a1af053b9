"""Output-distribution shift of a language model: next-token KL from base to tuned, per position.

At every real position ``t`` (attention-mask 1) of the same text, with next-token distributions
``p = softmax(base logits_t)`` and ``q = softmax(tuned logits_t)`` over the vocabulary ``V``:

* ``KL(p || q) = Σ_v p_v (log p_v - log q_v)`` (nats): how much probability the tuned model
  takes away from what the base predicted; 0 for identical models;
* entropies ``H(p) = -Σ_v p_v log p_v`` and ``H(q)`` (nats); their change ``H(q) - H(p)``
  (negative: the tuned model is more confident);
* the mean probability change per token ``Δ_v = mean_t (q_{t,v} - p_{t,v})``: the tokens with the
  largest ``Δ_v`` gained the most mass, the most negative lost the most. ``Σ_v Δ_v = 0``.

Logits are compared in float32 (log-softmax), under ``no_grad``, ``chunk`` positions at a time.
For a Hugging Face causal LM (``model.base_model`` gives the final hidden states and
``model.get_output_embeddings()`` is a Linear head) the logits themselves are only ever built for
``chunk`` positions: each batch runs the trunk once, and the head is applied to ``chunk`` hidden
rows at a time, so memory holds ``[chunk, V]`` logits per model instead of ``[tokens, V]``. The
split is checked once per model against the full forward on a short prefix, and a model where
they differ (logit soft-capping or scaling in the forward) falls back to full logits. With 8
``[chunk, V]`` float32 buffers live, ``chunk`` defaults to ``max_memory // (32 · V)`` positions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from retain.data.task import Batch, model_logits
from retain.diagnostics.memory_budget import default_budget, rows_within
from retain.errors import RetainError
from retain.evaluation.base import eval_mode, model_device

__all__ = ["OutputShift", "TokenShift", "output_shift"]


@dataclass(frozen=True)
class TokenShift:
    """One vocabulary entry's mean probability change ``Δ_v`` (and its base and tuned means)."""

    token_id: int
    token: str
    change: float
    base: float
    tuned: float


@dataclass(frozen=True)
class OutputShift:
    """Summary of the next-token distribution shift (see the module docstring).

    Attributes:
        positions: number of positions compared.
        kl_mean, kl_median, kl_p90, kl_max: ``KL(p || q)`` over positions (nats).
        entropy_base, entropy_tuned: mean entropies (nats); ``entropy_change`` = tuned - base.
        gained, lost: the ``top_k`` tokens with the largest and the most negative ``Δ_v``.
        kl_sample: the per-position KL values of the first ``keep`` positions (histograms).
    """

    positions: int
    kl_mean: float
    kl_median: float
    kl_p90: float
    kl_max: float
    entropy_base: float
    entropy_tuned: float
    entropy_change: float
    gained: list[TokenShift]
    lost: list[TokenShift]
    kl_sample: list[float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


def _token_text(tokenizer: Any, token_id: int) -> str:
    if tokenizer is None:
        return str(token_id)
    try:
        return str(tokenizer.decode([token_id]))
    except Exception:  # a tokenizer without decode for single ids: show the id
        return str(token_id)


class _Rows:
    """A model's logits at one batch's real positions, built ``[rows, V]`` on demand."""

    def __init__(self, model: nn.Module, batch: Batch, head: nn.Module | None) -> None:
        inputs = {k: v.to(model_device(model)) for k, v in batch.items() if k != "labels"}
        self.head = head
        out = _trunk_states(model, inputs) if head is not None else model_logits(model, inputs)
        if out.dim() != 3:
            raise RetainError(
                f"{type(model).__name__} gives logits of shape {tuple(out.shape)}; output shift "
                "compares next-token distributions of causal language models"
            )
        mask = batch.get("attention_mask")
        flat = out.reshape(-1, out.shape[-1])
        self.states = flat if mask is None else flat[mask.reshape(-1).bool().to(flat.device)]
        self.count = int(self.states.shape[0])
        self.vocab = int(getattr(head, "out_features", flat.shape[-1]))

    def logits(self, lo: int, hi: int) -> Tensor:
        """Float32 logits ``[hi - lo, V]`` of real positions ``lo..hi``."""
        part = self.states[lo:hi]
        return (part if self.head is None else self.head(part)).float()


def _trunk_states(model: nn.Module, inputs: Batch) -> Tensor:
    trunk = model.base_model
    assert isinstance(trunk, nn.Module)
    out = trunk(**inputs)
    states = out[0] if isinstance(out, tuple) else out.last_hidden_state
    assert isinstance(states, Tensor)
    return states


def _split_head(model: nn.Module, batch: Batch) -> nn.Module | None:
    """The Linear head applied to ``model.base_model``'s states, if that reproduces the model's
    logits on a short prefix of ``batch`` (1e-4 relative); else None (use full logits)."""
    trunk = getattr(model, "base_model", None)
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not isinstance(trunk, nn.Module) or trunk is model or not isinstance(head, nn.Linear):
        return None
    inputs = {k: v[:1, :8].to(model_device(model)) for k, v in batch.items() if k != "labels"}
    try:
        full = model_logits(model, inputs).float()
        split = head(_trunk_states(model, inputs)).float()
    except (AssertionError, AttributeError, TypeError, IndexError):
        return None
    scale = float(full.abs().max().clamp_min(1.0))
    if split.shape != full.shape or float((split - full).abs().max()) > 1e-4 * scale:
        return None
    return head


def output_shift(
    base: nn.Module,
    tuned: nn.Module,
    batches: Sequence[Batch],
    *,
    tokenizer: Any = None,
    top_k: int = 20,
    chunk: int | None = None,
    keep: int = 4096,
    progress: Callable[[int, int], None] | None = None,
    max_memory: int | None = None,
) -> OutputShift:
    """Next-token distribution shift from ``base`` to ``tuned`` on ``batches`` (token batches
    with ``input_ids`` and ``attention_mask``); ``tokenizer`` decodes the top tokens.

    ``chunk`` positions are compared at a time (default: as many as ``max_memory`` bytes allow,
    see the module docstring; ``max_memory`` defaults to
    :func:`~retain.diagnostics.memory_budget.default_budget` of ``base``).
    """
    if chunk is not None and chunk < 1:
        raise RetainError(f"output shift chunk must be >= 1 position, got {chunk}")
    budget = default_budget(base, max_memory)
    heads: tuple[nn.Module | None, nn.Module | None] | None = None
    kls: list[Tensor] = []
    entropy_p = entropy_q = 0.0
    change: Tensor | None = None
    mass_p: Tensor | None = None
    mass_q: Tensor | None = None
    with eval_mode(base), eval_mode(tuned):  # no_grad; each model's mode restored after
        for k, batch in enumerate(batches):
            if heads is None:
                heads = (_split_head(base, batch), _split_head(tuned, batch))
            b_all, t_all = _Rows(base, batch, heads[0]), _Rows(tuned, batch, heads[1])
            if (b_all.count, b_all.vocab) != (t_all.count, t_all.vocab):
                raise RetainError(
                    f"base gives logits {(b_all.count, b_all.vocab)} and tuned "
                    f"{(t_all.count, t_all.vocab)}; output shift needs two models with the "
                    "same vocabulary"
                )
            step = chunk or rows_within(budget, 32 * b_all.vocab)
            for lo in range(0, b_all.count, step):
                hi = lo + step
                lp = torch.log_softmax(b_all.logits(lo, hi), dim=-1).cpu()
                lq = torch.log_softmax(t_all.logits(lo, hi), dim=-1).cpu()
                p, q = lp.exp(), lq.exp()
                kls.append((p * (lp - lq)).sum(-1).clamp_min(0.0))
                entropy_p += float(-(p * lp).sum())
                entropy_q += float(-(q * lq).sum())
                if change is None:
                    change = torch.zeros(p.shape[-1], dtype=torch.float64)
                    mass_p = torch.zeros_like(change)
                    mass_q = torch.zeros_like(change)
                assert mass_p is not None
                assert mass_q is not None
                mass_p += p.sum(0, dtype=torch.float64)
                mass_q += q.sum(0, dtype=torch.float64)
            if progress is not None:
                progress(k + 1, len(batches))
    if not kls or mass_p is None or mass_q is None:
        raise RetainError("output_shift got no token positions; pass non-empty text batches")
    kl = torch.cat(kls)
    n = kl.numel()
    change = (mass_q - mass_p) / n

    def row(i: int) -> TokenShift:
        assert mass_p is not None
        assert mass_q is not None
        assert change is not None
        return TokenShift(
            token_id=i,
            token=_token_text(tokenizer, i),
            change=float(change[i]),
            base=float(mass_p[i] / n),
            tuned=float(mass_q[i] / n),
        )

    k = min(top_k, change.numel())
    gained = [row(int(i)) for i in torch.topk(change, k).indices]
    lost = [row(int(i)) for i in torch.topk(-change, k).indices]
    values = kl.double()
    return OutputShift(
        positions=n,
        kl_mean=float(values.mean()),
        kl_median=float(values.median()),
        kl_p90=float(torch.quantile(values[: 2**24], 0.9)),
        kl_max=float(values.max()),
        entropy_base=entropy_p / n,
        entropy_tuned=entropy_q / n,
        entropy_change=(entropy_q - entropy_p) / n,
        gained=gained,
        lost=lost,
        kl_sample=[float(v) for v in kl[:keep]],
    )
