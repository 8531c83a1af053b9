"""Select parameters by regular expression (``re.search`` on the dotted parameter name)."""

from __future__ import annotations

import re

from torch import nn

from retain.errors import RetainError

__all__ = ["select_parameters"]


def select_parameters(
    model: nn.Module, pattern: str | None = None, *, trainable_only: bool = True, what: str = ""
) -> dict[str, nn.Parameter]:
    """Named parameters whose name matches ``pattern`` (all when None), in registration order.

    ``trainable_only`` keeps only parameters with ``requires_grad``. A pattern that does not
    compile, or that selects nothing, raises :class:`RetainError` naming a few real parameter names.
    ``what`` names the caller in messages (``"ewc params"``).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad or not trainable_only]
    label = what or "parameter pattern"
    if pattern is None:
        selected = dict(named)
    else:
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise RetainError(
                f"{label} {pattern!r} is not a valid regular expression: {exc}"
            ) from (exc)
        selected = {n: p for n, p in named if regex.search(n)}
    if not selected:
        examples = ", ".join(n for n, _ in list(model.named_parameters())[:3])
        scope = "trainable " if trainable_only else ""
        raise RetainError(
            f"{label} {pattern!r} matches no {scope}parameter of {type(model).__name__} "
            f"(names look like: {examples}); fix the regular expression"
        )
    return selected
