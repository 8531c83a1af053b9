"""Task-incremental classification: one linear head per task over a shared encoder.

In task-incremental learning (van de Ven & Tolias 2019, "Three scenarios for continual
learning") the task identity is known at training and test time, so each task gets its own output
layer and only the shared encoder can forget. :class:`TaskHeads` holds the encoder and a
``ModuleDict`` of heads (parameters ``heads.<task>.weight`` / ``heads.<task>.bias``) and routes
``forward`` through the *active* head:

    logits = W_t · dropout(pool(encoder(x))) + b_t,   shape [N, num_labels_t]

with ``pool`` the first token's hidden state (``"cls"``) or the attention-masked mean over tokens
(``"mean"``: ``sum_i m_i h_i / sum_i m_i``). Heads not active take no part in the forward pass, so
they get no gradient and an optimizer leaves them exactly as they were.

Mixed batches (experience replay, A-GEM memories): an example may carry ``task_head``, the index
of its task's head (:data:`TASK_HEAD_KEY`, :func:`tag_with_head`). A batch with that key routes
every row through its own head; heads with fewer classes are padded to the widest head with the
lowest finite logit, so softmax, cross-entropy and argmax ignore the padding.

Protocol with the training engine: a model that has a ``use_task(name: str) -> None`` method gets
``model.use_task(task.name)`` before it trains on a task and before each task is scored, so
every task is trained and evaluated through its own head. Add a head for every task (``heads=`` or
:meth:`TaskHeads.add_task`) before training starts; ``use_task`` of a name without a head raises
:class:`~retain.errors.RetainError`.

A new head is initialised as Hugging Face initialises classifiers (weights ~ N(0, 0.02^2), bias 0)
from a ``torch.Generator`` seeded by the task name (or an explicit seed): two runs build identical
heads, and building one draws nothing from the global random state.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import torch
from torch import Tensor, nn

from retain.errors import RetainError

__all__ = [
    "TASK_HEAD_KEY",
    "Pooling",
    "TaskHeads",
    "find_task_heads",
    "head_seed",
    "tag_with_head",
    "task_router",
]

#: Batch key of a per-example head index (position in ``TaskHeads.tasks``): examples replayed
#: from earlier tasks carry it, so each one is scored by its own task's head.
TASK_HEAD_KEY = "task_head"

Pooling = Literal["cls", "mean"]
_INIT_STD = 0.02  # BertConfig.initializer_range, the std Hugging Face uses for classifier heads


def head_seed(task_name: str) -> int:
    """A seed derived from the task name: the first 8 bytes of SHA-256(name), little-endian,
    reduced to 63 bits (stable across runs and platforms, unlike ``hash``)."""
    digest = hashlib.sha256(task_name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _out_features(head: nn.Module) -> int:
    inner = getattr(head, "original_module", head)  # PEFT's modules_to_save wrapper
    if not isinstance(inner, nn.Linear):
        raise RetainError(f"head {type(head).__name__} is not an nn.Linear")
    return inner.out_features


class TaskHeads(nn.Module):
    """A shared encoder with one classification head per task; ``use_task`` picks the head.

    Args:
        encoder: any module called as ``encoder(input_ids=..., attention_mask=..., ...)`` that
            returns ``[N, T, hidden_size]`` hidden states, as a tensor or as the output's
            ``last_hidden_state`` (Hugging Face ``AutoModel``: ``BertModel`` and the like).
        hidden_size: width of the encoder's hidden states.
        heads: ``{task name: number of classes}`` heads to create now, in order.
        pooling: ``"cls"`` (first token) or ``"mean"`` (attention-masked mean over tokens).
        dropout: dropout probability on the pooled vector before the head (active in train mode).

    The first head added becomes the active one; afterwards only :meth:`use_task` changes it.
    """

    def __init__(
        self,
        encoder: nn.Module,
        hidden_size: int,
        heads: dict[str, int] | None = None,
        pooling: Pooling = "cls",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise RetainError(f"unknown pooling {pooling!r}; use 'cls' or 'mean'")
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1:
            raise RetainError(f"hidden_size must be a positive int, got {hidden_size!r}")
        if not 0.0 <= dropout < 1.0:
            raise RetainError(f"dropout must be in [0, 1), got {dropout}")
        self.encoder = encoder
        self.hidden_size = hidden_size
        self.pooling: Pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict()
        self._active: str | None = None
        for name, num_labels in (heads or {}).items():
            self.add_task(name, num_labels)

    @property
    def active_task(self) -> str | None:
        """The task whose head ``forward`` uses (None before any head exists)."""
        return self._active

    @property
    def tasks(self) -> dict[str, int]:
        """``{task name: number of classes}`` of every head, in the order they were added."""
        return {name: _out_features(head) for name, head in self.heads.items()}

    def add_task(self, name: str, num_labels: int, *, seed: int | None = None) -> nn.Linear:
        """Add the head of task ``name`` with ``num_labels`` classes and return it.

        Weights ~ N(0, 0.02^2) and bias 0, drawn from a generator seeded with ``seed`` (default
        :func:`head_seed` of the name), on the encoder's device and dtype. The global random state
        is not used. The active head changes only when this is the first head.
        """
        if not isinstance(name, str) or not name:
            raise RetainError(f"task name must be a non-empty string, got {name!r}")
        if "." in name:
            raise RetainError(
                f"task name {name!r} contains '.', which parameter names cannot hold; "
                f"rename it (e.g. {name.replace('.', '_')!r})"
            )
        if name in self.heads:
            raise RetainError(
                f"task {name!r} already has a head; call use_task({name!r}) to route to it"
            )
        if hasattr(self.heads, name):
            raise RetainError(
                f"task name {name!r} is reserved by torch's ModuleDict; rename the task "
                f"(e.g. {name + '_task'!r})"
            )
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
            raise RetainError(
                f"task {name!r}: num_labels must be an int >= 2 (classes of the head), got "
                f"{num_labels!r}"
            )
        reference = next(self.encoder.parameters(), None)
        device = reference.device if reference is not None else torch.device("cpu")
        dtype = reference.dtype if reference is not None else torch.float32
        generator = torch.Generator().manual_seed(head_seed(name) if seed is None else int(seed))
        weight = torch.empty(num_labels, self.hidden_size).normal_(
            0.0, _INIT_STD, generator=generator
        )
        head = nn.Linear(self.hidden_size, num_labels, device="meta", dtype=dtype)
        head = head.to_empty(device=device)  # no init: nothing is drawn from the global RNG
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.zero_()
        head.train(self.training)
        self.heads[name] = head
        if self._active is None:
            self._active = name
        return head

    def use_task(self, name: str) -> None:
        """Route ``forward`` through the head of task ``name`` (the engine calls this per task)."""
        if name not in self.heads:
            known = ", ".join(repr(n) for n in self.heads) or "none yet"
            raise RetainError(
                f"no head for task {name!r} (heads: {known}); add it first with "
                f"add_task({name!r}, num_labels)"
            )
        self._active = name

    def pool(self, hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
        """``[N, T, H] -> [N, H]``: the first token (``cls``) or the masked mean (``mean``)."""
        if self.pooling == "cls":
            return hidden[:, 0]
        if attention_mask is None:
            return hidden.mean(dim=1)
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        task_head: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Logits ``[N, num_labels]`` of the active task's head, or with ``task_head`` (head
        indices ``[N]``) each row's own head, padded to the widest head (see the module doc)."""
        if self._active is None:
            raise RetainError("TaskHeads has no head yet; call add_task(name, num_labels) first")
        inputs: dict[str, Any] = {"input_ids": input_ids, **kwargs}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        out = self.encoder(**inputs)
        hidden = out if isinstance(out, Tensor) else getattr(out, "last_hidden_state", None)
        if not isinstance(hidden, Tensor) or hidden.dim() != 3:
            raise RetainError(
                f"encoder {type(self.encoder).__name__} returned {type(out).__name__}, not "
                "[N, T, H] hidden states or an output with last_hidden_state; pass a base "
                "encoder (AutoModel), not a model with a head"
            )
        if hidden.shape[-1] != self.hidden_size:
            raise RetainError(
                f"encoder hidden states are {hidden.shape[-1]} wide but hidden_size="
                f"{self.hidden_size}; pass the encoder's hidden size"
            )
        pooled = self.dropout(self.pool(hidden, attention_mask))
        if task_head is None:
            logits: Tensor = self.heads[self._active](pooled)
            return logits
        return self._routed(pooled, task_head)

    def _routed(self, pooled: Tensor, task_head: Tensor) -> Tensor:
        heads = list(self.heads.values())
        index = task_head.reshape(-1).to(pooled.device, torch.long)
        if index.numel() != pooled.shape[0] or bool(((index < 0) | (index >= len(heads))).any()):
            raise RetainError(
                f"task_head holds indices outside 0..{len(heads) - 1} or has the wrong length; "
                "tag examples with tag_with_head(model, task_name, examples)"
            )
        width = max(_out_features(h) for h in heads)
        out = pooled.new_full((pooled.shape[0], width), torch.finfo(pooled.dtype).min)
        for k in torch.unique(index).tolist():
            rows = (index == k).nonzero(as_tuple=True)[0]
            logits = heads[k](pooled[rows])
            out[rows, : logits.shape[1]] = logits
        return out

    def head_index(self, name: str) -> int:
        """The position of task ``name``'s head (the value ``task_head`` uses for it)."""
        if name not in self.heads:
            raise RetainError(f"no head for task {name!r}; add it with add_task first")
        return list(self.heads).index(name)

    @classmethod
    def from_encoder_folder(
        cls,
        folder_or_hub_id: str,
        heads: dict[str, int],
        pooling: Pooling = "cls",
        trust_remote_code: bool = False,
        dropout: float = 0.1,
    ) -> TaskHeads:
        """``AutoModel.from_pretrained`` of a registry name (``minilm-l6``), a local folder or a
        hub id, with ``heads``; the hidden size comes from its config. Returned in eval mode (as
        ``from_pretrained`` leaves models); load the tokenizer from the same folder."""
        from transformers import AutoModel

        from retain.assets.models import model_folder
        from retain.assets.weight_files import corrupt_weights_error, is_corrupt_weights_error

        folder, origin = model_folder(folder_or_hub_id)
        try:
            encoder = AutoModel.from_pretrained(folder, trust_remote_code=trust_remote_code)
        except Exception as exc:
            if is_corrupt_weights_error(exc):
                raise corrupt_weights_error(folder_or_hub_id, folder, exc) from exc
            if not isinstance(exc, (OSError, ValueError)):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RetainError(
                f"cannot load {folder_or_hub_id!r} ({origin}) as an encoder: {first}; pass a "
                "Hugging Face model folder or hub id"
            ) from exc
        config = encoder.config
        hidden = next(
            (getattr(config, k) for k in ("hidden_size", "d_model", "dim") if hasattr(config, k)),
            None,
        )
        if not isinstance(hidden, int):
            raise RetainError(
                f"{folder_or_hub_id!r}: its config gives no hidden_size; build "
                "TaskHeads(encoder, hidden_size=...) yourself"
            )
        return cls(encoder, hidden, heads, pooling=pooling, dropout=dropout).eval()


def find_task_heads(model: nn.Module) -> TaskHeads | None:
    """The :class:`TaskHeads` inside ``model`` (itself, or under a PEFT/DDP wrapper), or None."""
    return next((m for m in model.modules() if isinstance(m, TaskHeads)), None)


def tag_with_head(model: nn.Module, task_name: str, examples: Any) -> Any:
    """``examples`` with ``task_head`` = the index of ``task_name``'s head added to each, when
    ``model`` routes through :class:`TaskHeads` (unchanged otherwise, or when already tagged)."""
    router = find_task_heads(model)
    if router is None or task_name not in router.heads:
        return examples
    if len(examples) and TASK_HEAD_KEY in examples[0]:
        return examples
    index = torch.tensor(router.head_index(task_name))
    return [{**example, TASK_HEAD_KEY: index} for example in examples]


def task_router(model: nn.Module) -> Any:
    """The first module of ``model`` that routes by task (a callable ``use_task``), or None.

    :class:`TaskHeads` is one; the engine and ``TaskAccuracyProbe`` find the router of a
    (possibly wrapped) model with it.
    """
    for module in model.modules():
        if callable(getattr(module, "use_task", None)):
            return module
    return None
