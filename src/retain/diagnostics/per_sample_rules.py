"""Per-sample parameter gradients of one module call, from its input and its output gradient.

For a module call ``y = f(x; θ)`` on a batch of ``N`` samples with output gradient
``g = ∂L/∂y`` (``L = Σ_n loss_n``, so row ``n`` of ``g`` only depends on sample ``n``), the
gradient of ``loss_n`` with respect to ``θ`` *through this call* depends only on ``x_n`` and
``g_n``. The rules (Goodfellow, 2015, "Efficient per-example gradient computations"; Dangel et
al., 2020, "BackPACK: packing more into backprop", ICLR):

* ``nn.Linear``, ``x [N, T, in]``, ``g [N, T, out]`` (middle dims flattened into ``T``):
  ``∂loss_n/∂W = Σ_t g_{n,t} x_{n,t}ᵀ`` and ``∂loss_n/∂b = Σ_t g_{n,t}``. Without middle dims
  ``Σ_n (∂loss_n/∂W)² = (g²)ᵀ (x²)``, so no ``[N, out, in]`` tensor is built.
* ``nn.Embedding``: the gradient of row ``v`` is ``Σ_{t: id_{n,t}=v} g_{n,t}`` (none for
  ``padding_idx``); squared row sums are accumulated by the key ``n·V + id`` without a
  ``[N, V, D]`` tensor.
* ``nn.LayerNorm``: ``∂loss_n/∂γ = Σ_t g_{n,t} ⊙ x̂_{n,t}``, ``∂loss_n/∂β = Σ_t g_{n,t}``, with
  ``x̂ = (x - mean) / sqrt(var + eps)`` over ``normalized_shape`` (biased variance).
* any other module called with one tensor (positional or keyword): ``vmap`` over samples of the
  vector-Jacobian product of ``functional_call(module, θ, (x_n[None],))`` with cotangent
  ``g_n[None]`` (``torch.func``).

:func:`add_sum_of_squares` adds ``Σ_n (∂loss_n/∂θ)²`` for parameters used once in the forward
(a Linear weight with middle dims a block of rows at a time, so no ``[N, out, in]`` tensor of a
large weight is built: :mod:`retain.diagnostics.blocked_squares`); :func:`per_sample` returns the
dense ``[N, *θ.shape]`` gradients and :func:`add_per_sample` adds them (or a block of their rows)
into one buffer in place, for parameters used several times (tied embeddings) whose usages must
be summed before squaring. All results are float32.

The capture side: :func:`owners` finds the modules that own the selected parameters,
:class:`CallCapture` records each call's input and output through forward hooks, and
:func:`autograd_uses` counts each parameter's uses in the autograd graph so that a parameter used
outside its module's own call (which hooks cannot see) is detected rather than missed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap
from torch.nn import functional

from retain.diagnostics.blocked_squares import (
    add_embedding_rows,
    add_linear_rows,
    add_linear_weight_squares,
)

__all__ = [
    "CallCapture",
    "CallRecord",
    "HooksUnsupportedError",
    "RuleKind",
    "add_per_sample",
    "add_sum_of_squares",
    "autograd_uses",
    "owners",
    "per_sample",
    "row_blocks",
    "rule_kind",
]

RuleKind = Literal["linear", "embedding", "layer_norm", "generic"]


class HooksUnsupportedError(Exception):
    """A module call or parameter use that the hooks engine cannot split into samples."""


@dataclass
class CallRecord:
    """One call of a hooked module: its input, its output, and their versions at call time."""

    module: nn.Module
    x: Tensor
    out: Tensor
    versions: tuple[int, int]
    key: str | None = None  # keyword the input was passed as (None: positional)

    def modified(self) -> bool:
        """Whether the input or output was modified in place after the call."""
        return (self.x._version, self.out._version) != self.versions


@dataclass
class CallCapture:
    """Forward hooks' state: which modules to record, and the records of the current forward.

    A call must take exactly one tensor (positional or keyword) whose first dimension is the
    batch's ``n`` samples; a call on a tensor shared by all samples (first dimension 1, such as
    BERT's position ids) gets its output expanded to ``n`` rows, so that each sample receives its
    own output gradient. Modules in ``clone`` (their input or output was modified in place later
    in the forward) have copies recorded instead. Anything else raises
    :class:`HooksUnsupportedError`.
    """

    names: dict[nn.Module, str]
    clone: set[nn.Module] = field(default_factory=set)
    records: list[CallRecord] = field(default_factory=list)
    active: bool = False
    n: int = 0

    def hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> Tensor | None:
        """Forward hook (``with_kwargs=True``): record ``(input, output)`` of one call."""
        if not self.active:
            return None
        name = f"{self.names[module]!r} ({type(module).__name__})"
        given = [*args, *kwargs.values()]
        if len(given) != 1 or not isinstance(given[0], Tensor):
            raise HooksUnsupportedError(
                f"module {name}: it is called with {len(given)} arguments, not one tensor"
            )
        if not isinstance(output, Tensor):
            raise HooksUnsupportedError(f"module {name}: it returns {type(output).__name__}")
        x, out, replaced = given[0].detach(), output, False
        if x.dim() == 0 or out.dim() == 0 or (x.shape[0], out.shape[0]) != (self.n, self.n):
            if x.dim() and out.dim() and (x.shape[0], out.shape[0]) == (1, 1):
                # Shared across samples and broadcast later (position embeddings): make the
                # sharing explicit so each sample gets its own output gradient.
                x = x.expand(self.n, *x.shape[1:])
                out, replaced = out.expand(self.n, *out.shape[1:]).contiguous(), True
            else:
                raise HooksUnsupportedError(
                    f"module {name}: its input's first dimension is not the batch's {self.n} "
                    "samples"
                )
        if module in self.clone:
            x = x.clone()
        key = next(iter(kwargs), None)
        self.records.append(CallRecord(module, x, out, (x._version, out._version), key))
        if module in self.clone:
            return out.clone()
        return out if replaced else None


def owners(model: nn.Module, selected: Iterable[nn.Parameter]) -> dict[nn.Module, list[str]]:
    """Module -> attribute names of the selected parameters it owns directly.

    A parameter registered both in a leaf module and in a module with children (a tied alias such
    as a prediction head's bias) is attributed to the leaf only; the graph check catches a wrong
    attribution.
    """
    ids = {id(p) for p in selected}
    owners: dict[nn.Module, list[tuple[str, int]]] = {}
    for module in model.modules():
        for attr, p in module.named_parameters(recurse=False):
            if id(p) in ids:
                owners.setdefault(module, []).append((attr, id(p)))
    in_leaf = {i for m, used in owners.items() if next(m.children(), None) is None for _, i in used}
    result: dict[nn.Module, list[str]] = {}
    for module, used in owners.items():
        leaf = next(module.children(), None) is None
        attrs = [attr for attr, i in used if leaf or i not in in_leaf]
        if attrs:
            result[module] = attrs
    return result


def autograd_uses(root: Any, ids: set[int]) -> dict[int, int]:
    """How many autograd edges reach each selected parameter's accumulator from ``root``."""
    counts: dict[int, int] = {}
    seen = {root}
    stack = [root]
    while stack:
        node = stack.pop()
        for child, _ in node.next_functions:
            if child is None:
                continue
            var = getattr(child, "variable", None)
            if var is not None and id(var) in ids:
                counts[id(var)] = counts.get(id(var), 0) + 1
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return counts


def rule_kind(module: nn.Module) -> RuleKind:
    """Which rule gives ``module``'s per-sample gradients (``"generic"`` unless a closed form)."""
    if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward:
        return "linear"
    if (
        isinstance(module, nn.Embedding)
        and type(module).forward is nn.Embedding.forward
        and module.max_norm is None
        and not module.scale_grad_by_freq
        and not module.sparse
    ):
        return "embedding"
    if isinstance(module, nn.LayerNorm) and type(module).forward is nn.LayerNorm.forward:
        return "layer_norm"
    return "generic"


def add_sum_of_squares(
    module: nn.Module,
    kind: RuleKind,
    out: dict[str, Tensor],
    x: Tensor,
    g: Tensor,
    budget: int,
    key: str | None = None,
) -> None:
    """Add ``Σ_n (∂loss_n/∂θ)²`` of this call to ``out[name]`` for each parameter name in ``out``.

    ``x`` is the call's input ``[N, ...]``, ``g`` the gradient of ``Σ_n loss_n`` with respect to
    its output; ``out`` maps attribute names of ``module`` to float32 accumulators;
    ``budget`` bounds the bytes of per-sample tensors built at once; ``key`` is the keyword the
    input was passed as (None: positional).
    """
    if kind == "linear":
        _linear_add(out, x, g, budget)
        return
    if kind == "embedding":
        _embedding_add(module, out["weight"], x, g)
        return
    names = list(out)
    step = _chunk(module, names, budget)
    for start in range(0, x.shape[0], step):
        part = slice(start, start + step)
        dense = per_sample(module, kind, names, x[part], g[part], key)
        for name, grads in dense.items():
            out[name].add_(grads.square_().sum(0))


def per_sample(
    module: nn.Module,
    kind: RuleKind,
    names: list[str],
    x: Tensor,
    g: Tensor,
    key: str | None = None,
) -> dict[str, Tensor]:
    """Dense per-sample gradients ``{name: [N, *shape]}`` of this call (float32)."""
    n = x.shape[0]
    if kind == "linear":
        a, gg = _flat(x, n), _flat(g, n)
        out = {}
        if "weight" in names:
            out["weight"] = torch.bmm(gg.transpose(1, 2), a)
        if "bias" in names:
            out["bias"] = gg.sum(1)
        return out
    if kind == "embedding":
        weight = _param(module, "weight")
        keys, rows = _embedding_keys(module, x, g)
        dense = torch.zeros(n * weight.shape[0], weight.shape[1], device=g.device)
        dense.index_put_((keys,), rows, accumulate=True)
        return {"weight": dense.view(n, *weight.shape)}
    if kind == "layer_norm":
        return _layer_norm_per_sample(module, names, x, g)
    return _generic_per_sample(module, names, x, g, key)


def add_per_sample(
    module: nn.Module,
    kind: RuleKind,
    name: str,
    x: Tensor,
    g: Tensor,
    dense: Tensor,
    key: str | None = None,
    rows: slice | None = None,
) -> None:
    """Add this call's per-sample gradients of parameter ``name``, rows ``rows`` (None: all),
    to ``dense [N, rows, numel of a row]`` in place (float32). A Linear weight or an Embedding
    builds only those rows (:mod:`retain.diagnostics.blocked_squares`); any other rule needs
    every row (:func:`row_blocks`)."""
    n = x.shape[0]
    whole = slice(0, dense.shape[1]) if rows is None else rows
    if kind == "linear" and name == "weight":
        add_linear_rows(dense, _flat(x, n), _flat(g, n), whole)
        return
    if kind == "embedding":
        keys, values = _embedding_keys(module, x, g)
        add_embedding_rows(dense, keys, values, int(_param(module, "weight").shape[0]), whole)
        return
    dense.add_(per_sample(module, kind, [name], x, g, key)[name].reshape(dense.shape))


def row_blocks(kind: RuleKind, name: str) -> bool:
    """Whether :func:`add_per_sample` can build a block of rows of parameter ``name`` alone."""
    return (kind == "linear" and name == "weight") or kind == "embedding"


def _param(module: nn.Module, name: str) -> Tensor:
    value = getattr(module, name)
    if not isinstance(value, Tensor):
        raise TypeError(f"{type(module).__name__}.{name} is not a tensor")
    return value


def _flat(t: Tensor, n: int) -> Tensor:
    """``[N, ..., k]`` as float32 ``[N, T, k]``."""
    return t.reshape(n, -1, t.shape[-1]).float()


def _chunk(module: nn.Module, names: list[str], budget: int) -> int:
    per = sum(_param(module, name).numel() for name in names) * 4
    return max(1, budget // max(per, 1))


def _linear_add(out: dict[str, Tensor], x: Tensor, g: Tensor, budget: int) -> None:
    n = x.shape[0]
    a, gg = _flat(x, n), _flat(g, n)
    if a.shape[1] == 1:  # Σ_n (g_n a_nᵀ)² = (g²)ᵀ (a²): no per-sample matrices
        g2 = gg[:, 0].square()
        if "weight" in out:
            out["weight"].addmm_(g2.t(), a[:, 0].square())
        if "bias" in out:
            out["bias"].add_(g2.sum(0))
        return
    if "weight" in out:
        add_linear_weight_squares(out["weight"], a, gg, budget)
    if "bias" in out:
        out["bias"].add_(gg.sum(1).square_().sum(0))


def _embedding_keys(module: nn.Module, x: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """Keys ``n·V + id`` and the matching float32 output-gradient rows, padding dropped."""
    n = x.shape[0]
    vocab = int(_param(module, "weight").shape[0])
    ids = x.reshape(n, -1).long()
    keys = (torch.arange(n, device=ids.device).unsqueeze(1) * vocab + ids).reshape(-1)
    rows = g.reshape(keys.shape[0], -1).float()
    padding = getattr(module, "padding_idx", None)
    if padding is not None:
        keep = ids.reshape(-1) != padding
        keys, rows = keys[keep], rows[keep]
    return keys, rows


def _embedding_add(module: nn.Module, acc: Tensor, x: Tensor, g: Tensor) -> None:
    vocab = int(_param(module, "weight").shape[0])
    keys, rows = _embedding_keys(module, x, g)
    unique, inverse = torch.unique(keys, return_inverse=True)[:2]
    sums = torch.zeros(unique.shape[0], rows.shape[1], device=g.device)
    sums.index_put_((inverse,), rows, accumulate=True)  # index_add_ is ~5x slower on CPU
    acc.index_put_((unique % vocab,), sums.square_(), accumulate=True)


def _layer_norm_per_sample(
    module: nn.Module, names: list[str], x: Tensor, g: Tensor
) -> dict[str, Tensor]:
    n = x.shape[0]
    shape = tuple(int(s) for s in _param(module, names[0]).shape)
    eps = float(cast(nn.LayerNorm, module).eps)
    xf, gf = x.float(), g.float()
    out = {}
    if "weight" in names:
        xhat = functional.layer_norm(xf, shape, None, None, eps)
        out["weight"] = (gf * xhat).reshape(n, -1, *shape).sum(1)
    if "bias" in names:
        out["bias"] = gf.reshape(n, -1, *shape).sum(1)
    return out


def _generic_per_sample(
    module: nn.Module, names: list[str], x: Tensor, g: Tensor, key: str | None
) -> dict[str, Tensor]:
    params = {name: _param(module, name).detach() for name in names}

    def one(theta: dict[str, Tensor], xn: Tensor, gn: Tensor) -> dict[str, Tensor]:
        def call(p: dict[str, Tensor]) -> Tensor:
            one_x = xn.unsqueeze(0)
            call_args = (one_x,) if key is None else ()
            call_kwargs = {} if key is None else {key: one_x}
            out: Tensor = functional_call(module, p, call_args, call_kwargs)
            return out

        pull = vjp(call, theta)[1]
        grads: dict[str, Tensor] = pull(gn.unsqueeze(0))[0]
        return grads

    grads: dict[str, Tensor] = vmap(one, in_dims=(None, 0, 0))(params, x, g)
    return {name: value.float() for name, value in grads.items()}
