"""Representational shift: linear CKA between a base and a tuned model's hidden states, per layer.

Linear centred kernel alignment (Kornblith, Norouzi, Lee & Hinton, 2019, "Similarity of neural
network representations revisited", ICML, eq. 4) of two representations of the same ``n``
inputs, ``X [n, d1]`` and ``Y [n, d2]``, each centred over the ``n`` rows:

    CKA(X, Y) = ||Yᵀ X||_F² / (||Xᵀ X||_F · ||Yᵀ Y||_F)

It lies in ``[0, 1]``, is 1 for identical representations, and is invariant to orthogonal
transforms and isotropic scaling of either side (not to arbitrary invertible maps). Computed from
``d × d`` cross-products (so ``n`` may be large), centred in float64.

:func:`representation_shift` runs both models on the same batches (``no_grad``, eval mode) with
``output_hidden_states=True`` and compares, layer by layer, the hidden states of the first
``max_tokens`` real (attention-mask 1) tokens: row ``i`` of ``X`` and of ``Y`` is the same token
of the same text. The first ``skip_first`` positions of every sequence are left out (default 1):
in transformer LMs the first position is an attention sink whose hidden state is hundreds of
times larger than the others' in the middle blocks ("massive activations", Sun et al., 2024,
COLM), and linear CKA, a ratio of squared norms, would measure little else. Hidden-state index 0
is the embedding output (``"embeddings"``); index ``k + 1`` is the output of transformer block
``k`` (``"block k"``), counted from 0 as in parameter names (``model.layers.k``).

Memory: the rows kept are ``2 × max_tokens × Σ_layers d × 4`` bytes (float32), bounded by
``max_tokens`` and independent of the vocabulary and of how many batches are read; the ``d × d``
products are built one layer at a time. (Streaming centred ``d × d`` moments instead would hold
``3 × d² × 8`` bytes per layer, more than the rows whenever ``d > max_tokens / 1.5``; at d =
4096 and 33 layers that is 13 GB against 2.2 GB of rows.) Worked example, SmolLM2-135M (31
hidden-state layers of 576 features, ``max_tokens = 2048``): ``2 × 2048 × 31 × 576 × 4`` =
292 MB.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from retain.data.task import Batch
from retain.errors import RetainError
from retain.evaluation.base import eval_mode, model_device
from retain.evaluation.representation import feature_model

__all__ = ["LayerSimilarity", "hidden_states", "linear_cka", "representation_shift"]


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA of ``x [n, d1]`` and ``y [n, d2]`` (rows are the same inputs); see the module
    docstring. Constant representations (zero variance) give ``nan``.

    >>> x = torch.randn(50, 8)
    >>> round(linear_cka(x, 3.0 * x), 6)
    1.0
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise RetainError(
            f"linear_cka needs two [n, d] matrices with the same n; got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    if x.shape[0] < 2:
        raise RetainError("linear_cka needs at least 2 rows (inputs) to centre")
    # Centre in float64; the d x d products run in float32 unless an input is float64 (their
    # relative error, about 1e-6, is far below the 4 decimals a report shows) and are summed in
    # float64.
    wide = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
    xd = (x.double() - x.double().mean(0, keepdim=True)).to(wide)
    yd = (y.double() - y.double().mean(0, keepdim=True)).to(wide)
    cross = (yd.T @ xd).double().square().sum()
    norm_x = (xd.T @ xd).double().square().sum().sqrt()
    norm_y = (yd.T @ yd).double().square().sum().sqrt()
    denominator = norm_x * norm_y
    if float(denominator) == 0.0:
        return float("nan")
    return float(cross / denominator)


def hidden_states(model: nn.Module, batch: Batch) -> tuple[Tensor, ...]:
    """``(embeddings, block 0, ..., block L-1)``, each ``[batch, tokens, d]``, of one forward.

    A model with task heads is read through its encoder (:func:`feature_model`). A causal LM
    whose forward takes ``logits_to_keep`` builds logits for the last position only: hidden
    states do not need the ``[batch, tokens, V]`` logits.
    """
    inner = feature_model(model)
    inputs: dict[str, Any] = {
        k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")
    }
    if "logits_to_keep" in inspect.signature(inner.forward).parameters:
        inputs["logits_to_keep"] = 1
    output = inner(**inputs, output_hidden_states=True)
    states = getattr(output, "hidden_states", None)
    if states is None:
        raise RetainError(
            f"{type(inner).__name__} returns no hidden_states; representational shift needs a "
            "Hugging Face model that accepts output_hidden_states=True"
        )
    return tuple(states)


@dataclass(frozen=True)
class LayerSimilarity:
    """CKA of one layer's hidden states: ``index`` 0 is the embeddings, ``k + 1`` block ``k``."""

    index: int
    name: str
    cka: float


def representation_shift(
    base: nn.Module,
    tuned: nn.Module,
    batches: Sequence[Batch],
    *,
    max_tokens: int = 2048,
    skip_first: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> list[LayerSimilarity]:
    """Per-layer linear CKA between ``base`` and ``tuned`` on the same ``batches``.

    Uses the first ``max_tokens`` real tokens (mask 1) in batch order, leaving out the first
    ``skip_first`` positions of each sequence (see the module docstring). ``progress(done, total)``
    is called after each batch. Both models must have the same number of hidden-state layers.
    """
    if max_tokens < 2:
        raise RetainError(f"max_tokens must be >= 2 for CKA, got {max_tokens}")
    if skip_first < 0:
        raise RetainError(f"skip_first must be >= 0, got {skip_first}")
    gathered: list[tuple[list[Tensor], list[Tensor]]] = []
    count = 0
    with eval_mode(base), eval_mode(tuned):  # no_grad; each model's mode restored after
        for k, batch in enumerate(batches):
            if count >= max_tokens:
                break
            b_states = hidden_states(base, {n: t.to(model_device(base)) for n, t in batch.items()})
            t_states = hidden_states(
                tuned, {n: t.to(model_device(tuned)) for n, t in batch.items()}
            )
            if len(b_states) != len(t_states):
                raise RetainError(
                    f"base has {len(b_states)} hidden-state layers and tuned "
                    f"{len(t_states)}; CKA compares models of one architecture"
                )
            mask = batch.get("attention_mask")
            shape = b_states[0].shape[:2]
            real = mask.bool() if mask is not None else torch.ones(shape, dtype=torch.bool)
            real = real.clone()
            real[:, :skip_first] = False
            keep = real.reshape(-1)
            take = min(int(keep.sum()), max_tokens - count)
            rows = keep.nonzero().squeeze(1)[:take]
            if not gathered:
                gathered = [([], []) for _ in b_states]
            for (xs, ys), b, t in zip(gathered, b_states, t_states, strict=True):
                xs.append(b.reshape(-1, b.shape[-1])[rows.to(b.device)].float().cpu())
                ys.append(t.reshape(-1, t.shape[-1])[rows.to(t.device)].float().cpu())
            count += take
            if progress is not None:
                progress(k + 1, len(batches))
    if count < 2:
        raise RetainError(
            f"representation_shift got {count} tokens after leaving out the first {skip_first} "
            "of each sequence; pass more or longer text"
        )
    return [
        LayerSimilarity(
            index=i,
            name="embeddings" if i == 0 else f"block {i - 1}",
            cka=linear_cka(torch.cat(xs), torch.cat(ys)),
        )
        for i, (xs, ys) in enumerate(gathered)
    ]
