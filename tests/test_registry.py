"""The generic registry: aliases, sorted listing, did-you-mean errors."""

from __future__ import annotations

import pytest

from retain.errors import RetainError, UnknownNameError
from retain.registry import Registry


def make() -> Registry[int]:
    r: Registry[int] = Registry("model")
    r.register("smollm2-135m", 1, "a causal LM", aliases=("smollm2",))
    r.register("minilm-l6", 2, "an encoder")
    return r


def test_get_by_name_alias_and_case() -> None:
    r = make()
    assert r.get("smollm2-135m") == 1
    assert r.get("SmolLM2") == 1
    assert "minilm-l6" in r
    assert "nope" not in r
    assert [e.name for e in r] == ["minilm-l6", "smollm2-135m"]
    assert len(r) == 2


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(UnknownNameError) as err:
        make().get("smollm2-13m")
    assert (
        str(err.value)
        == "unknown model 'smollm2-13m'; did you mean 'smollm2-135m'? (see: retain ls)"
    )
    assert isinstance(err.value, RetainError)
    assert isinstance(err.value, KeyError)


def test_unknown_name_without_a_close_match() -> None:
    with pytest.raises(UnknownNameError, match=r"^unknown model 'zzzz' \(see: retain ls\)$"):
        make().get("zzzz")


def test_duplicate_registration_is_refused() -> None:
    r = make()
    with pytest.raises(ValueError, match="registered twice"):
        r.register("other", 3, "x", aliases=("smollm2",))
