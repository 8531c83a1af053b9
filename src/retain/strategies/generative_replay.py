"""Generative replay for causal language models: replay text the model itself generates.

Hanul Shin, Jung Kwon Lee, Jaehong Kim, Jiwon Kim, "Continual Learning with Deep Generative
Replay", NeurIPS 2017; Fan-Keng Sun, Cheng-Hao Ho, Hung-Yi Lee, "LAMOL: LAnguage MOdeling for
Lifelong Language Learning", ICLR 2020.

At the first task start the starting model samples ``num_samples`` sequences
``x ~ p_θ(· | prompt)`` (temperature ``τ`` and top-``k`` sampling, at most ``max_new_tokens`` new
tokens, cut after the first end-of-sequence token). They are mixed into every task's data exactly
as :mod:`retain.strategies.replay` mixes its buffer: ``k = round(n · ratio / (1 − ratio))``
samples join the task's ``n`` examples, each a language-modelling example whose labels are its
tokens. With ``refresh=True`` the samples are regenerated at every later task start, from the
model that has learnt the earlier tasks (LAMOL's scheme).

No tokenizer is needed: the prompt is token ids (default: the model config's ``bos_token_id``).
Sampling is seeded inside ``torch.random.fork_rng()``, so the global RNG is left as it was.
Distributed: each rank generates the same samples from the same seed and weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from retain.data.task import Example, Task
from retain.errors import RetainError
from retain.strategies.base import StateDict, Strategy, register_strategy
from retain.strategies.replay_buffer import (
    check_count,
    check_ratio,
    derive_seed,
    examples_from_state,
    examples_state,
    mix,
)

__all__ = ["GenerativeReplay"]


def _token_ids(value: Any) -> list[int]:
    """``value`` (an int or a list of ints, possibly None) as a list of token ids."""
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


@register_strategy("generative replay: mix text sampled from the starting LM into each task")
class GenerativeReplay(Strategy):
    """Generative replay for causal LMs (Shin et al. 2017; LAMOL, Sun et al. 2020).

    Args:
        ratio: fraction of generated examples in the mix, in ``[0, 1)``; 0 switches it off (no
            generation, the task is returned unchanged).
        num_samples: sequences generated (>= 1).
        max_new_tokens: the most tokens generated after the prompt (>= 1).
        temperature: sampling temperature ``τ`` (> 0): tokens are drawn from
            ``softmax(logits / τ)``.
        top_k: sample among the ``k`` most likely tokens; None samples from the full vocabulary.
        prompt_ids: token ids every sample starts with; None uses the model's ``bos_token_id``.
        seed: seeds generation (per generation round) and the per-task draw of samples.
        batch_size: sequences generated per ``generate`` call.
        refresh: regenerate at every task start from the current model (False: generate once,
            from the starting model).

    Other generation settings (repetition penalty, ...) come from the model's
    ``generation_config``; ``top_p`` is set to 1.
    """

    name = "generative_replay"
    unsharded_only = "generation must run on every rank in lockstep"

    def __init__(
        self,
        ratio: float = 0.5,
        num_samples: int = 256,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_k: int | None = 50,
        prompt_ids: list[int] | None = None,
        seed: int = 0,
        batch_size: int = 16,
        refresh: bool = False,
    ) -> None:
        owner = "generative_replay"
        self.ratio = check_ratio(owner, ratio)
        self.num_samples = check_count(owner, "num_samples", num_samples, 1)
        self.max_new_tokens = check_count(owner, "max_new_tokens", max_new_tokens, 1)
        self.temperature = float(temperature)
        if not 0 < self.temperature < float("inf"):
            raise RetainError(f"{owner} temperature must be a finite number > 0, got {temperature}")
        if top_k is not None:
            check_count(owner, "top_k", top_k, 1, "; use None to sample from the full vocabulary")
        self.top_k = top_k
        if prompt_ids is not None:
            if isinstance(prompt_ids, (str, bytes)) or not prompt_ids:
                raise RetainError(f"{owner} prompt_ids must be a non-empty list of token ids")
            for i in prompt_ids:
                check_count(owner, "prompt_ids entry", i, 0)
            prompt_ids = list(prompt_ids)
        self.prompt_ids = prompt_ids
        self.seed = int(seed)
        self.batch_size = check_count(owner, "batch_size", batch_size, 1)
        self.refresh = bool(refresh)
        #: the generated sequences, each ``{"input_ids": [T]}`` (prompt included)
        self.samples: list[Example] = []
        #: generation rounds run so far (seeds each round and each task's draw)
        self.generations = 0
        #: tasks ended so far, and the count when the samples were generated
        self.tasks_ended = 0
        self.generated_at = -1

    def on_task_start(self, model: nn.Module, task: Task) -> None:
        """Generate the samples at the first task start (with ``refresh``, at every task start;
        a task started again after a resume keeps the samples generated for it)."""
        due = self.generations == 0 or (self.refresh and self.generated_at != self.tasks_ended)
        if self.ratio > 0 and due:
            self.samples = self.generate(model)
            self.generations += 1
            self.generated_at = self.tasks_ended

    def on_task_end(self, model: nn.Module, task: Task) -> None:
        """Count the task (``refresh`` regenerates at the next start)."""
        self.tasks_ended += 1

    def generate(self, model: nn.Module) -> list[Example]:
        """``num_samples`` sequences sampled from ``model`` (eval mode, no gradients); each module's
        train/eval mode and the global RNG state are restored afterwards."""
        generate = getattr(model, "generate", None)
        can = getattr(model, "can_generate", None)
        config = getattr(model, "config", None)
        if not callable(generate) or (callable(can) and not can()):
            raise RetainError(
                f"generative_replay needs a causal LM with generate(), got {type(model).__name__}; "
                "use replay with stored examples for other models"
            )
        if getattr(config, "is_encoder_decoder", False):
            raise RetainError(
                f"generative_replay needs a decoder-only causal LM, got encoder-decoder "
                f"{type(model).__name__}"
            )
        prompt = self.prompt_ids or _token_ids(getattr(config, "bos_token_id", None))
        if not prompt:
            raise RetainError(
                f"{type(model).__name__} config has no bos_token_id; pass "
                "generative_replay(prompt_ids=[...]) with the token ids to start samples from"
            )
        eos = _token_ids(getattr(config, "eos_token_id", None))
        pad = getattr(config, "pad_token_id", None)
        pad = pad if pad is not None else (eos[0] if eos else 0)
        device = next(model.parameters()).device
        fork_devices: list[int] = []
        if device.type == "cuda":
            fork_devices = list(range(torch.cuda.device_count()))
        modes = [(m, m.training) for m in model.modules()]
        samples: list[Example] = []
        try:
            model.eval()
            seed = derive_seed(self.seed, "generate", self.generations)
            with torch.random.fork_rng(devices=fork_devices), torch.no_grad():
                torch.manual_seed(seed)
                while len(samples) < self.num_samples:
                    rows = min(self.batch_size, self.num_samples - len(samples))
                    ids = torch.tensor([prompt] * rows, dtype=torch.long, device=device)
                    out = generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        do_sample=True,
                        max_new_tokens=self.max_new_tokens,
                        temperature=self.temperature,
                        top_k=0 if self.top_k is None else self.top_k,
                        top_p=1.0,
                        pad_token_id=pad,
                    )
                    sequences = out if isinstance(out, Tensor) else out.sequences
                    samples.extend(_cut(row, len(prompt), eos) for row in sequences)
        finally:
            for module, training in modes:
                module.training = training
        return samples

    def train_data(self, task: Task, model: nn.Module) -> Task:
        """The task's examples followed by ``k`` generated ones, shaped like the task's examples
        (``labels`` = the tokens and an all-ones ``attention_mask`` when the task has them)."""
        if self.ratio <= 0 or not self.samples:
            return task
        own = task.examples[0]
        ids = own.get("input_ids")
        dtype = ids.dtype if isinstance(ids, Tensor) else torch.long
        pool: list[Example] = []
        for sample in self.samples:
            tokens = sample["input_ids"].to(dtype)
            example: Example = {"input_ids": tokens}
            if "labels" in own:
                example["labels"] = tokens.clone()
            if "attention_mask" in own:
                example["attention_mask"] = torch.ones_like(tokens)
            pool.append(example)
        seed = derive_seed(
            self.seed, "generative-mix", task.name, len(task.examples), self.generations
        )
        return mix(task, pool, self.ratio, seed, "generative_replay")

    def state_dict(self) -> StateDict:
        """The generated samples and the counters."""
        state = examples_state(self.samples, "samples")
        state["generations"] = self.generations
        state["tasks_ended"] = self.tasks_ended
        state["generated_at"] = self.generated_at
        return state

    def load_state_dict(self, state: StateDict) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.samples = examples_from_state(state, "samples")
        self.generations = int(state["generations"])
        self.tasks_ended = int(state["tasks_ended"])
        self.generated_at = int(state["generated_at"])


def _cut(row: Tensor, prompt_length: int, eos: list[int]) -> Example:
    """``{"input_ids": row}`` up to and including the first generated eos token (padding after
    it dropped), on the CPU."""
    new = row[prompt_length:]
    if eos:
        hits = torch.isin(new, torch.tensor(eos, device=row.device)).nonzero()
        if hits.numel():
            new = new[: int(hits[0, 0]) + 1]
    return {"input_ids": torch.cat([row[:prompt_length], new]).detach().to("cpu", copy=True)}
