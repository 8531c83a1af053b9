"""Find a model's stack of transformer blocks and give every parameter a depth.

Layer-wise learning rates and gradual unfreezing (Howard & Ruder 2018, ULMFiT; Clark et al. 2020,
ELECTRA) treat a network as embeddings, then ``L`` blocks, then a head. :func:`detect_block_stack`
finds the blocks, and :class:`BlockStack` maps every parameter name to its depth:

========  ================================================================================
depth     parameters
========  ================================================================================
``-1``    "embeddings": registered before the first block parameter
``l``     block ``l`` (``0 <= l < L``, counted from the input side)
``L``     "head": registered after the last block parameter (pooler, classifier, final
          norm, ``lm_head``)
========  ================================================================================

Order is ``model.named_parameters()`` registration order. A parameter shared under two names
(GPT-2's ``lm_head.weight`` tied to ``transformer.wte.weight``) is listed once, under its first
name, so a tied output projection stays with the embeddings; its second name maps to the same
depth.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from retain.errors import RetainError

__all__ = ["EMBEDDINGS", "BlockStack", "detect_block_stack"]

#: Depth of the parameters registered before the first block.
EMBEDDINGS = -1


@dataclass(frozen=True)
class BlockStack:
    """A model's block stack: where the blocks live and the depth of every parameter.

    Attributes:
        prefix: dotted name of the blocks' container (``"bert.encoder.layer"``,
            ``"transformer.h"``, ``"model.layers"``; ``""`` when the model is the list itself).
        num_blocks: ``L``, the number of blocks.
        depths: parameter name -> depth (-1 embeddings, ``0..L-1`` blocks, ``L`` head).
    """

    prefix: str
    num_blocks: int
    depths: Mapping[str, int] = field(repr=False, compare=False)

    def depth(self, param_name: str) -> int | None:
        """Depth of ``param_name``: -1 embeddings, ``l`` for block ``l``, ``L`` for the head;
        None for a name the model did not have when the stack was detected."""
        return self.depths.get(param_name)

    @property
    def head(self) -> int:
        """Depth of the head, ``L``."""
        return self.num_blocks

    def label(self, depth: int) -> str:
        """``"embeddings"``, ``"block.<l>"`` or ``"head"`` for a depth.

        >>> BlockStack("h", 2, {}).label(-1), BlockStack("h", 2, {}).label(1)
        ('embeddings', 'block.1')
        """
        if depth == EMBEDDINGS:
            return "embeddings"
        if depth == self.num_blocks:
            return "head"
        if 0 <= depth < self.num_blocks:
            return f"block.{depth}"
        raise RetainError(f"depth {depth} is outside -1..{self.num_blocks} for this block stack")


def detect_block_stack(model: nn.Module, pattern: str | None = None) -> BlockStack:
    """The block stack of ``model`` and the depth of each of its parameters.

    Automatic (``pattern=None``): the ``nn.ModuleList`` holding the most parameters among those
    with at least 2 children, all of one class (BERT ``bert.encoder.layer``, GPT-2
    ``transformer.h``, Llama ``model.layers``, the same inside a PEFT wrapper, or any custom
    ``self.blocks = nn.ModuleList([...])``). For an encoder-decoder the larger stack wins; use
    ``pattern`` to choose.

    ``pattern``: a regular expression searched in each parameter name whose first capturing
    group is the block index, e.g. ``r"encoder\\.layer\\.(\\d+)\\."``. Distinct captured indices,
    sorted as integers, become blocks ``0..L-1``. A parameter that matches nothing but sits
    between two block parameters joins the block before it.

    Raises :class:`RetainError` for a pattern that does not compile, has no group, captures a
    non-integer or matches nothing, and for a model without a block list when no pattern is given.
    """
    named = list(model.named_parameters())
    if not named:
        raise RetainError(f"{type(model).__name__} has no parameters; pass a model to train")
    if pattern is None:
        prefix, num_blocks, index_of = _from_module_list(model)
    else:
        prefix, num_blocks, index_of = _from_pattern(model, pattern, [n for n, _ in named])
    block_positions = [i for i, (n, _) in enumerate(named) if n in index_of]
    if not block_positions:  # every block parameter is shared with an earlier one
        raise RetainError(
            f"the blocks under {prefix!r} own no parameter of their own; pass pattern= to choose "
            "the blocks"
        )
    first, last = block_positions[0], block_positions[-1]
    by_id: dict[int, int] = {}
    current = EMBEDDINGS
    for i, (name, param) in enumerate(named):
        if i < first:
            depth = EMBEDDINGS
        elif i > last:
            depth = num_blocks
        else:
            depth = index_of.get(name, current)
            current = depth
        by_id[id(param)] = depth
    depths = {n: by_id[id(p)] for n, p in model.named_parameters(remove_duplicate=False)}
    return BlockStack(prefix, num_blocks, depths)


def _from_module_list(model: nn.Module) -> tuple[str, int, dict[str, int]]:
    """``(prefix, L, name -> block index)`` from the largest homogeneous ModuleList."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > 0 and (best is None or size > best[0]):
            best = (size, name, module)
    if best is None:
        raise RetainError(
            f"{type(model).__name__} has no nn.ModuleList of at least 2 same-class blocks; pass "
            r"pattern= a regex whose group is the block index, e.g. r'layers\.(\d+)\.'"
        )
    _, prefix, blocks = best
    lead = f"{prefix}." if prefix else ""
    index_of: dict[str, int] = {}
    for i, block in enumerate(blocks):
        for sub, _ in block.named_parameters():
            index_of[f"{lead}{i}.{sub}"] = i
    return prefix, len(blocks), index_of


def _from_pattern(
    model: nn.Module, pattern: str, names: list[str]
) -> tuple[str, int, dict[str, int]]:
    """``(prefix, L, name -> block index)`` from a regex whose group 1 is the block index."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise RetainError(
            f"block pattern {pattern!r} is not a valid regular expression: {exc}"
        ) from exc
    if regex.groups < 1:
        raise RetainError(
            f"block pattern {pattern!r} has no capturing group; wrap the block index in "
            r"parentheses, e.g. r'layers\.(\d+)\.'"
        )
    raw: dict[str, int] = {}
    prefix = ""
    for name in names:
        match = regex.search(name)
        if match is None or match.group(1) is None:
            continue
        try:
            raw[name] = int(match.group(1))
        except ValueError as exc:
            raise RetainError(
                f"block pattern {pattern!r} captured {match.group(1)!r} in {name!r}, not a block "
                r"index; make the group capture digits only, e.g. (\d+)"
            ) from exc
        if not prefix:
            prefix = name[: match.start(1)].rstrip(".")
    if not raw:
        examples = ", ".join(names[:3])
        raise RetainError(
            f"block pattern {pattern!r} matches no parameter of {type(model).__name__} "
            f"(names look like: {examples}); fix the regular expression"
        )
    rank = {value: i for i, value in enumerate(sorted(set(raw.values())))}
    return prefix, len(rank), {name: rank[value] for name, value in raw.items()}
