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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from retain.data.task import Batch, model_logits
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


def _positions(model: nn.Module, batch: Batch) -> Tensor:
    """Log-probabilities ``[positions, V]`` (float32) at the batch's real positions."""
    inputs = {k: v.to(model_device(model)) for k, v in batch.items() if k != "labels"}
    logits = model_logits(model, inputs)
    if logits.dim() != 3:
        raise RetainError(
            f"{type(model).__name__} gives logits of shape {tuple(logits.shape)}; output shift "
            "compares next-token distributions of causal language models"
        )
    mask = batch.get("attention_mask")
    flat = logits.reshape(-1, logits.shape[-1])
    if mask is not None:
        flat = flat[mask.reshape(-1).bool().to(flat.device)]
    return flat


def output_shift(
    base: nn.Module,
    tuned: nn.Module,
    batches: Sequence[Batch],
    *,
    tokenizer: Any = None,
    top_k: int = 20,
    chunk: int = 256,
    keep: int = 4096,
    progress: Callable[[int, int], None] | None = None,
) -> OutputShift:
    """Next-token distribution shift from ``base`` to ``tuned`` on ``batches`` (token batches
    with ``input_ids`` and ``attention_mask``); ``tokenizer`` decodes the top tokens.
    """
    kls: list[Tensor] = []
    entropy_p = entropy_q = 0.0
    change: Tensor | None = None
    mass_p: Tensor | None = None
    mass_q: Tensor | None = None
    with eval_mode(base), eval_mode(tuned):  # no_grad; each model's mode restored after
        for k, batch in enumerate(batches):
            b_all, t_all = _positions(base, batch), _positions(tuned, batch)
            if b_all.shape != t_all.shape:
                raise RetainError(
                    f"base gives logits {tuple(b_all.shape)} and tuned {tuple(t_all.shape)}; "
                    "output shift needs two models with the same vocabulary"
                )
            for lo in range(0, b_all.shape[0], chunk):
                lp = torch.log_softmax(b_all[lo : lo + chunk].float(), dim=-1).cpu()
                lq = torch.log_softmax(t_all[lo : lo + chunk].float(), dim=-1).cpu()
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
