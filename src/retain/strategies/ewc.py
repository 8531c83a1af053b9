"""EWC: penalise moving the weights that a task's Fisher information marks as important.

Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017 (separate
penalties, one per task); online EWC from Schwarz et al., "Progress & Compress: A scalable
framework for continual learning", ICML 2018 (one decayed running Fisher). With ``λ`` the strength,

    R(θ) = λ/2 · Σ_t Σ_i F_{t,i} (θ_i − θ*_{t,i})²,    ∂R/∂θ_i = λ · Σ_t F_{t,i} (θ_i − θ*_{t,i})

where ``F_t`` is the diagonal Fisher of task ``t`` (mean over samples of squared per-sample loss
gradients, in nats² per squared parameter unit) and ``θ*_t`` the weights at the end of task ``t``.
Online mode keeps one term: ``F ← γ·F + F_t``, ``θ* ← θ_t`` (memory constant in the number of
tasks). EWC protects the parameters that are trainable when the Fisher is estimated; the
penalty engine is :class:`~retain.strategies.importance.ImportancePenalty`. Under
``torch.distributed`` the Fisher is the mean over every rank's samples (``estimate_fisher``
all-reduces), so every rank stores the same terms and adds the same gradient.

On a sharded model (FSDP2 ``fully_shard``) every rank stores only its shards of ``F_t`` and
``θ*_t`` (memory per rank: per term, twice the protected parameters' float32 bytes over the world
size with ``storage_dtype="float32"``) and adds its shard of the gradient. The Fisher is then
estimated shard by shard with :func:`~retain.strategies.sharded_fisher.sharded_fisher` (every rank
runs every one of the ``fisher_samples`` samples, so each reads its shard of each per-sample
gradient; see that module for the scheme, its cost and its memory).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from torch import Tensor, nn

from retain.data.task import Task
from retain.distributed import is_sharded
from retain.strategies.anchored import StorageDtype
from retain.strategies.base import register_strategy
from retain.strategies.importance import (
    ImportancePenalty,
    check_choice,
    check_sampling,
    rank_share,
)

__all__ = ["EWC"]

FisherEstimator = Literal["empirical", "true", "batch"]


@register_strategy("EWC: penalise moving weights in proportion to each task's Fisher information")
class EWC(ImportancePenalty):
    """Elastic weight consolidation (Kirkpatrick et al. 2017; online: Schwarz et al. 2018).

    ``R(θ) = λ/2 · Σ_t Σ_i F_{t,i} (θ_i − θ*_{t,i})²`` with ``λ`` = ``strength``.

    Args:
        strength: ``λ`` (>= 0; 0 switches the penalty off).
        fisher: Fisher estimator passed to :func:`retain.diagnostics.fisher.estimate_fisher`
            (``"empirical"``: gradients of the labelled loss; ``"true"``: labels sampled from the
            model; ``"batch"``: squared mini-batch gradients).
        mode: ``"separate"`` keeps one ``(F_t, θ*_t)`` per task; ``"online"`` keeps one decayed
            sum ``F ← γ·F + F_t`` anchored at the latest weights.
        gamma: ``γ`` in (0, 1], the online decay.
        normalize: divide each task's Fisher by its maximum (``"max"``) or mean (``"mean"``) over
            all selected entries, so ``λ`` means the same across models; ``"none"`` keeps it.
        fisher_samples: examples of the task used to estimate the Fisher (None: all).
        fisher_batch_size: examples per forward pass while estimating the Fisher.
        params: regular expression (``re.search`` on names) choosing the protected parameters;
            None protects every trainable parameter.
        storage_dtype: dtype of the stored Fisher and anchors (``"bfloat16"``: per task, as many
            bytes as the model's float32 parameters; upcast to float32 in the computation).
        offload: keep the stored tensors in CPU memory (copied to the device each step).
    """

    name = "ewc"
    unsharded_only = None  # anchors (and Fisher) on local shards: tests/training/test_fsdp.py
    weight_kind = "fisher"
    weight_label = "Fisher"
    sharded_estimate = True

    def __init__(
        self,
        strength: float = 1000.0,
        fisher: FisherEstimator = "empirical",
        mode: Literal["separate", "online"] = "separate",
        gamma: float = 1.0,
        normalize: Literal["none", "max", "mean"] = "none",
        fisher_samples: int | None = 512,
        fisher_batch_size: int = 32,
        params: str | None = None,
        storage_dtype: StorageDtype = "float32",
        offload: bool = False,
    ) -> None:
        self._setup(strength, mode, gamma, normalize, params, storage_dtype, offload)
        check_choice("ewc", "fisher", fisher, ("empirical", "true", "batch"))
        self.fisher: FisherEstimator = fisher
        self.fisher_samples, self.fisher_batch_size = check_sampling(
            "ewc", ("fisher_samples", "fisher_batch_size"), fisher_samples, fisher_batch_size
        )

    def estimate(
        self, model: nn.Module, task: Task, params: Mapping[str, nn.Parameter]
    ) -> dict[str, Tensor]:
        """``F_t``: the diagonal Fisher on this rank's share of the task's first
        ``fisher_samples`` examples (all-reduced to the mean over every rank's samples); on a
        sharded model, this rank's shards of the Fisher on all of them."""
        if is_sharded(model):
            from retain.strategies.sharded_fisher import sharded_fisher

            return sharded_fisher(
                model,
                task,
                params,
                estimator=self.fisher,
                max_samples=self.fisher_samples,
                batch_size=self.fisher_batch_size,
            )
        from retain.diagnostics.fisher import estimate_fisher

        return estimate_fisher(
            model,
            rank_share(task, self.fisher_samples),
            estimator=self.fisher,
            params=params,
            max_samples=None,
            batch_size=self.fisher_batch_size,
        )

    def file_fields(self) -> dict[str, Any]:
        """The Fisher estimator, saved with the terms."""
        return {"estimator": self.fisher}

    def save_fisher(self, path: str | Path) -> Path:
        """Write every ``(F_t, θ*_t)`` to a safetensors file with the parameter names and shapes,
        the model class, the estimator and the mode (atomically)."""
        return self.save_terms(path)

    def load_fisher(self, path: str | Path, model: nn.Module) -> None:
        """Replace the stored terms by those in ``path`` (from :meth:`save_fisher`).

        The file must come from the same model: a parameter missing from ``model`` or with
        another shape raises :class:`RetainError` naming it. With ``params`` set, only the
        matching parameters of the file are kept.
        """
        self.load_terms(path, model)
