"""Brand fit: is a trend about what the brand sells? Offline, deterministic, explainable.

A brand declares its `topics:` (tasks.config.schema.BrandConfig): categories from a shared lexicon
(`configs/topics/<name>.yaml`, zh and en words, each category with a weight), its own
keywords, deny-topics and a relevance threshold. The brand loader resolves them into a
`BrandFit` (words with weights) that travels on the brand's `SafetyPolicy`, so ranking and
planning need no files:

    fit = BrandFit.resolve(brand_topics, {"coffee": TopicCategory(...), ...})
    fit_reason(["冬季护肤急救"], [], fit)  # -> ("deny_topic", "brand deny topic 'skincare' ...")
    score(["秋冬热饮 拿铁"], [], fit)        # -> Relevance(score=1.0, matched=["拿铁 (coffee)"])

How a trend is scored (every title of a merged topic, and its tags):
1. Each brand word is looked for. Chinese words inside the normalized title (NFKC,
   casefolded, no spaces or punctuation), counted only where they do not straddle a jieba
   word boundary: "热饮" is found in "秋冬热饮" but not in "加热|饮料", and a one-character
   word must end a jieba word, where Chinese compounds put their head ("茶" in "奶茶" or
   "一杯|茶", not in "茶几"). Latin words match whole words (a plural -s/-es too); long Latin
   words (7+ letters) also match a word within rapidfuzz ratio 85 ("expresso" ~ "espresso"
   87.5), at that ratio's strength.
2. A hit is worth its weight x strength: the brand's own keywords weigh 1.0, a category's
   words its weight in `topics.categories`.
3. Hits combine as independent evidence: relevance = 1 - prod(1 - w_i) over distinct words
   (a word inside a longer word also found is the same evidence: 饮品 in 限定饮品), so one
   exact word of a full-weight category gives 1.0 and two weak hits add up (0.4 and 0.4 ->
   0.64), never above 1.
4. Any deny word (a deny category's words, or a literal word) rejects, whatever the score.

Why not embeddings: the sentence-embedding models that ship inside PyPI wheels and load
offline (all-MiniLM-L6-v2) are English-only, and Chinese trend titles are the common case
here. A lexicon with jieba boundaries is deterministic, costs microseconds per trend (jieba's
dictionary loads once per process, ~1 s, and only when a Chinese word is found), and every
decision names the word that caused it, which is what a content team needs to tune it.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from rapidfuzz import fuzz

from tasks.trends.sources import trend_key

# Characters that make a title "CJK": compared character by character, not word by word.
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f]")
# Letters and digits that end a Latin word: a Latin term matches whole words only.
LATIN_WORD = "0-9a-z\u00c0-\u024f"
CATEGORY_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")  # a file name under configs/topics/

DEFAULT_THRESHOLD = 0.5  # one word of a category weighted 0.5 or more is enough to fit
FUZZY_MIN_LEN = 7  # shorter Latin words have close unrelated neighbours (brunch ~ bunch 90.9)
FUZZY_CUTOFF = 85.0  # rapidfuzz ratio: espresso ~ expresso 87.5, coffee ~ toffee 83.3


def words(text: str) -> str:
    """NFKC, casefolded, every run of non-word characters (and '_') a single space.

    Invisible format characters (zero-width space or joiner, bidi controls) are dropped
    first: "b\u200bomb" is the word "bomb", not "b omb", so it cannot slip past a blocklist.
    """
    visible = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cf", "Cs", "Co"))
    return " ".join(re.split(r"[\W_]+", unicodedata.normalize("NFKC", visible).casefold())).strip()


def has_cjk(text: str) -> bool:
    return CJK.search(text) is not None


# ---------------------------------------------------------------------------------------------
# Config: the shared lexicon and a brand's `topics:`


def _check_terms(value: list[str]) -> list[str]:
    for term in value:
        if not isinstance(term, str) or not trend_key(term).strip():
            raise ValueError(f"empty word {term!r}: every entry needs a letter or a character")
    return value


class TopicWords(BaseModel):
    """Words in Chinese and in English (either list may be empty)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    zh: list[str] = Field(default_factory=list)
    en: list[str] = Field(default_factory=list)

    @field_validator("zh", "en")
    @classmethod
    def _no_empty_words(cls, value: list[str]) -> list[str]:
        return _check_terms(value)

    @property
    def all(self) -> list[str]:
        return [*self.zh, *self.en]


class TopicCategory(TopicWords):
    """`configs/topics/<name>.yaml`: the words that say a trend is about one category."""

    kind: Literal["topic"] = "topic"
    name: str = Field(description="the category's name, as brands list it: the file's stem")
    description: str = ""

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not CATEGORY_NAME.fullmatch(value):
            raise ValueError(f"category name {value!r} must be lower-case letters, digits, '-' "
                             "or '_', starting with a letter")
        return value

    @model_validator(mode="after")
    def _has_words(self) -> TopicCategory:
        if not self.all:
            raise ValueError(f"category {self.name!r} has no words: add zh and/or en words")
        return self


class BrandTopics(BaseModel):
    """A brand's `topics:`: which trends it may use in its posters (brand fit)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    categories: dict[str, float] = Field(
        default_factory=dict,
        description="lexicon categories (configs/topics/<name>.yaml) -> weight in (0, 1]; "
                    "a plain list weighs each 1.0")
    keywords: TopicWords = Field(default_factory=TopicWords,
                                 description="the brand's own words (weight 1.0)")
    deny: list[str] = Field(default_factory=list,
                            description="categories or words the brand never uses: always rejected")
    threshold: float = Field(
        default=DEFAULT_THRESHOLD, ge=0.0, le=1.0,
        description="least relevance (0-1) a trend needs: 0.5 = one word of a category "
                    "weighted 0.5 or more")
    library: str = Field(default="../topics",
                         description="directory of the category files, relative to the brand file")

    @field_validator("categories", mode="before")
    @classmethod
    def _list_weighs_one(cls, value: Any) -> Any:
        if isinstance(value, list):
            return {name: 1.0 for name in value}
        return value

    @field_validator("categories")
    @classmethod
    def _valid_weights(cls, value: dict[str, float]) -> dict[str, float]:
        for name, weight in value.items():
            if not CATEGORY_NAME.fullmatch(name):
                raise ValueError(f"category name {name!r} must be lower-case letters, digits, '-' "
                                 "or '_' (the file configs/topics/<name>.yaml)")
            if not 0.0 < weight <= 1.0:
                raise ValueError(f"category {name!r}: weight must be in (0, 1] (got {weight})")
        return value

    @field_validator("deny")
    @classmethod
    def _no_empty_deny(cls, value: list[str]) -> list[str]:
        return _check_terms(value)

    @model_validator(mode="after")
    def _something_to_match(self) -> BrandTopics:
        if not self.categories and not self.keywords.all:
            raise ValueError("topics need categories or keywords (or remove `topics:` to use "
                             "every safe trend)")
        return self

    def category_names(self) -> list[str]:
        """Every category named, in `categories` and in `deny` (deny words may be categories)."""
        return [*self.categories, *(d for d in self.deny if CATEGORY_NAME.fullmatch(d))]


class FitWord(BaseModel):
    """One resolved word: its text, weight and where it came from (keywords, a category)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str
    weight: float = 1.0
    origin: str


class BrandFit(BaseModel):
    """A brand's topics resolved against the lexicon: what `score` and `fit_reason` use."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    words: list[FitWord]
    deny: list[FitWord] = Field(default_factory=list)
    threshold: float = Field(default=DEFAULT_THRESHOLD, ge=0.0, le=1.0)
    categories: list[str] = Field(default_factory=list, description="for messages")

    @classmethod
    def resolve(cls, topics: BrandTopics, lexicon: Mapping[str, TopicCategory]) -> BrandFit:
        """Expand categories into words. `lexicon` must hold every category in `topics.categories`;
        a deny entry that names a lexicon category denies its words, any other is a word."""
        found: list[FitWord] = [FitWord(text=w, origin="keywords") for w in topics.keywords.all]
        for name, weight in topics.categories.items():
            found += [FitWord(text=w, weight=weight, origin=name) for w in lexicon[name].all]
        deny: list[FitWord] = []
        for entry in topics.deny:
            if entry in lexicon:
                deny += [FitWord(text=w, origin=entry) for w in lexicon[entry].all]
            else:
                deny.append(FitWord(text=entry, origin=entry))
        # One entry per word: the heaviest wins, so listing a word twice never counts twice
        best: dict[str, FitWord] = {}
        for word in found:
            key = _match_key(word.text)
            if key not in best or word.weight > best[key].weight:
                best[key] = word
        return cls(words=list(best.values()), deny=deny, threshold=topics.threshold,
                   categories=list(topics.categories))


# ---------------------------------------------------------------------------------------------
# Matching


def _match_key(text: str) -> str:
    return trend_key(text) if has_cjk(text) else words(text)


def _jieba_boundaries(key: str) -> set[int]:
    """Offsets in `key` where jieba's words start or end (jieba loads once per process)."""
    import jieba

    jieba.setLogLevel(logging.WARNING)  # it logs dictionary loading at DEBUG to stderr
    bounds, offset = {0}, 0
    for token in jieba.lcut(key):
        offset += len(token)
        bounds.add(offset)
    return bounds


def _cjk_strength(word_key: str, text_key: str) -> float:
    """1.0 when the Chinese word is in the text without straddling a jieba word boundary."""
    start = text_key.find(word_key)
    if start < 0:
        return 0.0
    bounds = _jieba_boundaries(text_key)
    while start >= 0:
        end = start + len(word_key)
        aligned = start in bounds and end in bounds
        inside_one_word = not any(start < b < end for b in bounds)
        # Inside one jieba word: a longer word anywhere (咖啡 in 咖啡馆); one character only as
        # the word's last, its head in Chinese compounds (茶 in 奶茶 or 喝茶, not in 茶几)
        if aligned or (inside_one_word and (len(word_key) >= 2 or end in bounds)):
            return 1.0
        start = text_key.find(word_key, start + 1)
    return 0.0


def _latin_strength(word_words: str, text_words: str, fuzzy: bool) -> float:
    """1.0 for the word (or phrase) as whole words, a plural too; else a close long word."""
    pattern = rf"(?<![{LATIN_WORD}]){re.escape(word_words)}(?:e?s)?(?![{LATIN_WORD}])"
    if re.search(pattern, text_words):
        return 1.0
    if not fuzzy or " " in word_words or len(word_words) < FUZZY_MIN_LEN:
        return 0.0
    best = 0.0
    for token in re.findall(rf"[{LATIN_WORD}]+", text_words):
        if len(token) >= FUZZY_MIN_LEN:
            best = max(best, fuzz.ratio(word_words, token))
    return best / 100 if best >= FUZZY_CUTOFF else 0.0


@dataclass(frozen=True)
class _Text:
    """One title or tag, normalized both ways."""

    what: str  # "title" | "tag"
    raw: str
    key: str = field(init=False)
    words: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", trend_key(self.raw))
        object.__setattr__(self, "words", words(self.raw))


def _strength(word: str, text: _Text, fuzzy: bool) -> float:
    if has_cjk(word):
        return _cjk_strength(trend_key(word), text.key)
    return _latin_strength(words(word), text.words, fuzzy)


def _texts(titles: Sequence[str], tags: Sequence[str]) -> list[_Text]:
    return [_Text("title", t) for t in titles] + [_Text("tag", t) for t in tags]


@dataclass(frozen=True)
class Relevance:
    """How much a trend is about the brand (0-1), and the words that said so."""

    score: float
    matched: list[str]  # "拿铁 (coffee)", strongest first


def score(titles: Sequence[str], tags: Sequence[str], fit: BrandFit) -> Relevance:
    """Relevance of a trend (its titles and tags) to the brand: see the module docstring."""
    texts = _texts(titles, tags)
    found: dict[str, tuple[float, str]] = {}  # match key -> (value, "word (origin)")
    for word in fit.words:
        strength = max((_strength(word.text, text, fuzzy=True) for text in texts), default=0.0)
        if strength > 0:
            found[_match_key(word.text)] = (word.weight * strength, f"{word.text} ({word.origin})")
    # A word inside a longer one found too is the same evidence: 饮品 in 限定饮品 counts once,
    # at the better of the two values, under the longer word
    hits: list[tuple[float, str]] = []
    for key, (value, name) in found.items():
        if any(key != other and key in other for other in found):
            continue
        inner = [v for k, (v, _) in found.items() if k != key and k in key]
        hits.append((max([value, *inner]), name))
    miss = 1.0
    for value, _ in hits:
        miss *= 1.0 - value
    hits.sort(key=lambda h: (-h[0], h[1]))
    return Relevance(score=round(1.0 - miss, 4), matched=[name for _, name in hits])


def denied(titles: Sequence[str], tags: Sequence[str], fit: BrandFit) -> str | None:
    """The deny reason (naming the deny topic, word and where it was found), else None."""
    texts = _texts(titles, tags)
    for word in fit.deny:
        for text in texts:
            if _strength(word.text, text, fuzzy=False) > 0:
                where = f"{word.text!r} in {text.what} {text.raw!r}"
                if word.origin == word.text:  # a literal deny word
                    return f"brand deny topic {where}"
                return f"brand deny topic {word.origin!r}: {where}"
    return None


def fit_reason(titles: Sequence[str], tags: Sequence[str], fit: BrandFit | None
               ) -> tuple[Literal["deny_topic", "relevance"], str] | None:
    """(rule, reason) when the trend is not for this brand, else None (no `fit`: every trend fits)."""
    if fit is None:
        return None
    reason = denied(titles, tags, fit)
    if reason is not None:
        return "deny_topic", reason
    relevance = score(titles, tags, fit)
    if relevance.score < fit.threshold:
        why = (f"only {', '.join(relevance.matched)}" if relevance.matched
               else f"no word of its topics: {', '.join(fit.categories) or 'keywords'}")
        return "relevance", (f"off-brand: relevance {relevance.score:.2f} < threshold "
                             f"{fit.threshold:.2f} ({why})")
    return None
