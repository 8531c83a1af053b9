"""Next-token KL: 0 for identical models, equal to a direct computation, mass changes sum to 0."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional
from transformers import LlamaForCausalLM

from retain.diagnostics.output_shift import output_shift
from tiny_models import tiny_llama_config


def lm(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(60)).eval()


def batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 60, (6, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # padding is not a position
    return [{"input_ids": ids[:3], "attention_mask": mask[:3]}, {"input_ids": ids[3:]}]


def test_identical_models_shift_nothing() -> None:
    model = lm(0)
    shift = output_shift(model, copy.deepcopy(model), batches())
    assert shift.kl_mean == pytest.approx(0.0, abs=1e-6)
    assert shift.kl_max == pytest.approx(0.0, abs=1e-6)
    assert shift.entropy_change == pytest.approx(0.0, abs=1e-6)
    assert all(abs(t.change) < 1e-7 for t in shift.gained + shift.lost)
    assert shift.positions == 3 * 9 - 3 + 3 * 9


def test_kl_and_entropy_equal_a_direct_computation() -> None:
    base, tuned = lm(0), lm(1)
    data = batches()
    shift = output_shift(base, tuned, data, top_k=5)
    kls, ent_p, ent_q, change = [], [], [], torch.zeros(60, dtype=torch.float64)
    with torch.no_grad():
        for batch in data:
            mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
            lp = functional.log_softmax(base(**batch).logits[mask], -1)
            lq = functional.log_softmax(tuned(**batch).logits[mask], -1)
            kls.append(functional.kl_div(lq, lp, log_target=True, reduction="none").sum(-1))
            ent_p.append(-(lp.exp() * lp).sum(-1))
            ent_q.append(-(lq.exp() * lq).sum(-1))
            change += (lq.exp() - lp.exp()).sum(0).double()
    kl = torch.cat(kls)
    assert shift.kl_mean == pytest.approx(float(kl.mean()), rel=1e-5)
    assert shift.kl_max == pytest.approx(float(kl.max()), rel=1e-5)
    assert shift.entropy_base == pytest.approx(float(torch.cat(ent_p).mean()), rel=1e-5)
    assert shift.entropy_tuned == pytest.approx(float(torch.cat(ent_q).mean()), rel=1e-5)
    change /= kl.numel()
    assert float(change.sum()) == pytest.approx(0.0, abs=1e-6)
    assert shift.gained[0].token_id == int(change.argmax())
    assert shift.lost[0].token_id == int(change.argmin())
    assert shift.gained[0].change == pytest.approx(float(change.max()), rel=1e-5)
    assert len(shift.kl_sample) == kl.numel()


@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_chunked_head_gives_the_full_logits_kl_per_position(chunk: int | None) -> None:
    from retain.diagnostics.output_shift import _split_head

    base, tuned = lm(0), lm(1)
    data = batches()
    with torch.no_grad():
        assert _split_head(base, data[0]) is base.lm_head  # logits only ever [chunk, V]
    shift = output_shift(base, tuned, data, chunk=chunk)
    kls = []
    with torch.no_grad():
        for batch in data:
            mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
            lp = functional.log_softmax(base(**batch).logits[mask].float(), -1)
            lq = functional.log_softmax(tuned(**batch).logits[mask].float(), -1)
            kls.append((lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0))
    torch.testing.assert_close(torch.tensor(shift.kl_sample), torch.cat(kls), rtol=1e-5, atol=1e-5)


def test_soft_capped_logits_fall_back_to_the_full_forward() -> None:
    from retain.diagnostics.output_shift import _split_head

    class Capped(LlamaForCausalLM):  # type: ignore[misc]
        def forward(self, *args: object, **kwargs: object) -> object:
            out = super().forward(*args, **kwargs)
            out.logits = 3.0 * torch.tanh(out.logits / 3.0)
            return out

    torch.manual_seed(0)
    model = Capped(tiny_llama_config(60)).eval()
    with torch.no_grad():
        assert _split_head(model, batches()[0]) is None
    shift = output_shift(model, model, batches())
    assert shift.kl_max == pytest.approx(0.0, abs=1e-6)
