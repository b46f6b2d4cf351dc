"""Rank ingested trends: merge near-duplicates across sources, score, filter for brand safety
and brand fit (tasks.trends.relevance), and skip what a brand used recently.

    report = ingest(sources)                                   # tasks.trends.sources
    ranked = rank_trends(report, brand.safety, history.recent_keys(brand.slug, 14, now),
                         sensitive_terms=load_sensitive_terms(path), now=now)
    ranked.kept      # [ScoredTrend], best first
    ranked.dropped   # [DroppedTrend(trend, reason, rule)]

Everything here is a pure function of its inputs (pass `now`): same inputs, same order.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from rapidfuzz import fuzz

from tasks.core.errors import ConfigError, StoreError
from tasks.store.keys import TRENDS_HISTORY
from tasks.trends.relevance import LATIN_WORD as _LATIN_WORD
from tasks.trends.relevance import BrandFit, fit_reason
from tasks.trends.relevance import has_cjk as _has_cjk
from tasks.trends.relevance import score as relevance_score
from tasks.trends.relevance import words as _words
from tasks.trends.sources import SourceFailure, SourceNote, Trend, TrendReport, TrendSource, trend_key

if TYPE_CHECKING:
    from tasks.store.objects import ObjectStore

# Numbers in a title (Arabic after NFKC, or Chinese numerals): "双十一" and "双十二" differ only
# here, and so do "iPhone 16" and "iPhone 17"; titles whose numbers differ never merge.
_NUMBERS = re.compile(r"[0-9]+(?:\.[0-9]+)?|[〇零一二三四五六七八九十百千万亿两]+")


class RankingConfig(BaseModel):
    """Weights of the score and thresholds of near-duplicate merging; the defaults are sensible.

    score = w_rank * rank + w_heat * heat + w_recency * recency + w_agree * (sources - 1), where
    rank = weight / sqrt(position in its source), heat = weight * log1p(score) / log1p(max score
    of the batch), recency = 0.5 ** (age_h / half_life_h) (newest member; a future date counts
    as now), and weight is the source's `weight` (1.0 by default).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    w_rank: float = Field(default=1.0, ge=0)
    w_heat: float = Field(default=1.0, ge=0)
    w_recency: float = Field(default=1.0, ge=0)
    w_agree: float = Field(default=0.5, ge=0, description="per extra source listing the topic")
    half_life_h: float = Field(default=24.0, gt=0, description="hours for recency to halve")
    undated_recency: float = Field(default=0.5, ge=0, le=1, description="recency of undated trends")
    cjk_threshold: float = Field(
        default=80.0, ge=0, le=100,
        description="character-level similarity (rapidfuzz ratio of normalized titles) at which "
                    "titles with Chinese/Japanese/Korean text merge: '秋冬围巾穿搭' ~ "
                    "'秋冬 围巾 穿搭攻略' is 85.7, '秋冬围巾穿搭' ~ '秋冬大衣穿搭' is 66.7")
    latin_threshold: float = Field(
        default=88.0, ge=0, le=100,
        description="word-level similarity (rapidfuzz token_sort_ratio) at which other titles "
                    "merge: 'winter skincare' ~ 'winter haircare' is 80, so they stay apart")


# ---------------------------------------------------------------------------------------------
# Near-duplicates


def similarity(a: str, b: str) -> float:
    """0-100: character-level for titles with CJK text, word-level (order-free) for others."""
    key_a, key_b = trend_key(a), trend_key(b)
    if key_a == key_b:
        return 100.0
    if _has_cjk(key_a) or _has_cjk(key_b):
        return fuzz.ratio(key_a, key_b)
    return fuzz.token_sort_ratio(_words(a), _words(b))


def is_near_duplicate(a: str, b: str, config: RankingConfig | None = None) -> bool:
    """True when two titles name the same topic: similar enough and with the same numbers."""
    config = config or RankingConfig()
    key_a, key_b = trend_key(a), trend_key(b)
    if key_a == key_b:
        return True
    if _NUMBERS.findall(key_a) != _NUMBERS.findall(key_b):
        return False
    cjk = _has_cjk(key_a) or _has_cjk(key_b)
    return similarity(a, b) >= (config.cjk_threshold if cjk else config.latin_threshold)


def cluster_trends(trends: Sequence[Trend], config: RankingConfig | None = None) -> list[list[Trend]]:
    """Group near-duplicate titles, in input order; each group's first trend is its leader.

    A trend joins the first group whose leader it duplicates (leaders only, so "A ~ B ~ C"
    never chains A and C together).
    """
    config = config or RankingConfig()
    clusters: list[list[Trend]] = []
    for trend in trends:
        home = next((c for c in clusters if is_near_duplicate(c[0].title, trend.title, config)), None)
        if home is None:
            clusters.append([trend])
        else:
            home.append(trend)
    return clusters


# ---------------------------------------------------------------------------------------------
# Brand safety


class SafetyPolicy(BaseModel):
    """A brand's trend filter. Terms match titles and tags, ignoring case, width, spaces and
    punctuation; Latin terms match whole words, and a trailing '*' matches a word's start.

    `fit` is the brand's `topics:` resolved by the brand loader (tasks.config.schema.load_brand): with
    it, only trends about the brand pass (tasks.trends.relevance); without it, every safe trend does.
    """

    model_config = ConfigDict(extra="forbid")

    blocklist: list[str] = Field(default_factory=list, description="terms the brand never touches")
    deny_topics: list[str] = Field(default_factory=list,
                                   description="topics the brand stays out of (matched in tags too)")
    fit: BrandFit | None = Field(default=None,
                                 description="brand fit, filled from the brand's `topics:` by the loader")

    @field_validator("blocklist", "deny_topics")
    @classmethod
    def _no_empty_terms(cls, value: list[str]) -> list[str]:
        for term in value:
            if not trend_key(term.rstrip("*")):
                raise ValueError(f"empty term {term!r}: every entry needs a letter or a character")
        return value


def load_sensitive_terms(path: str | Path) -> list[str]:
    """Read a shared term list: one term per line, '#' starts a comment, blank lines skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), None, "sensitive-terms file not found; check the path") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), None, f"not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    terms = []
    for number, line in enumerate(text.splitlines(), start=1):
        term = line.split("#", 1)[0].strip()
        if not term:
            continue
        if not trend_key(term.rstrip("*")):
            raise ConfigError(str(path), f"line {number}", "a term needs a letter or a character", term)
        terms.append(term)
    return terms


@dataclass(frozen=True)
class _Term:
    """One compiled term: CJK terms match inside normalized keys, Latin ones whole words."""

    text: str
    rule: Literal["blocklist", "deny_topic", "sensitive"]
    matches: Callable[[str, str], bool]  # (key, words) -> bool


def _compile(term: str, rule: Literal["blocklist", "deny_topic", "sensitive"]) -> _Term:
    prefix = term.endswith("*")
    core = term.rstrip("*")
    if _has_cjk(core):
        key = trend_key(core)
        return _Term(term, rule, lambda k, _w: key in k)
    words = _words(core)
    end = "" if prefix else f"(?![{_LATIN_WORD}])"
    pattern = re.compile(f"(?<![{_LATIN_WORD}]){re.escape(words)}{end}")
    return _Term(term, rule, lambda _k, w: pattern.search(w) is not None)


_RULE_LABELS = {
    "blocklist": "brand blocklist term",
    "deny_topic": "brand deny topic",
    "sensitive": "shared sensitive term",
}


def _terms(policy: SafetyPolicy | None, sensitive_terms: Iterable[str]) -> list[_Term]:
    policy = policy or SafetyPolicy()
    return ([_compile(t, "blocklist") for t in policy.blocklist]
            + [_compile(t, "deny_topic") for t in policy.deny_topics]
            + [_compile(t, "sensitive") for t in sensitive_terms])


def _unsafe(titles: Sequence[str], tags: Sequence[str], terms: Sequence[_Term]) -> tuple[str, str] | None:
    """(rule, reason) of the first term found in a title or a tag, else None."""
    fields = [("title", t) for t in titles] + [("tag", t) for t in tags]
    for term in terms:
        for what, text in fields:
            if term.matches(trend_key(text), _words(text)):
                return term.rule, f"{_RULE_LABELS[term.rule]} {term.text!r} in {what} {text!r}"
    return None


def safety_reason(trend: Trend, policy: SafetyPolicy | None = None,
                  sensitive_terms: Iterable[str] = ()) -> str | None:
    """Why `trend` is unsafe for the brand (naming the term), or None when it is fine."""
    found = _unsafe([trend.title], trend.tags, _terms(policy, sensitive_terms))
    return found[1] if found else None


# ---------------------------------------------------------------------------------------------
# Results


class ScoreParts(BaseModel):
    """The terms of a trend's score, before their weights."""

    model_config = ConfigDict(extra="forbid")

    rank: float
    heat: float
    recency: float
    agree: int


class ScoredTrend(BaseModel):
    """A topic after merging: its leading trend (best score, every tag and source), its score."""

    model_config = ConfigDict(extra="forbid")

    trend: Trend
    score: float
    sources: list[str]
    variants: list[str] = Field(default_factory=list, description="other titles merged into it")
    keys: list[str] = Field(description="normalized keys of every merged title (for history)")
    parts: ScoreParts
    relevance: float | None = Field(default=None, description="brand fit 0-1 (None: no topics)")
    matched: list[str] = Field(default_factory=list, description="brand words found, e.g. '拿铁 (coffee)'")

    @property
    def title(self) -> str:
        return self.trend.title


class DroppedTrend(BaseModel):
    """A trend left out, and why (which term, which deny topic or relevance, or which recent use)."""

    model_config = ConfigDict(extra="forbid")

    trend: Trend
    reason: str
    rule: Literal["blocklist", "deny_topic", "sensitive", "relevance", "history"]


class RankedTrends(BaseModel):
    """Ranked, filtered trends; the dropped ones with reasons; the failed sources."""

    model_config = ConfigDict(extra="forbid")

    kept: list[ScoredTrend]
    dropped: list[DroppedTrend] = Field(default_factory=list)
    failures: list[SourceFailure] = Field(default_factory=list)
    notes: list[SourceNote] = Field(default_factory=list)

    @property
    def trends(self) -> list[Trend]:
        """The kept trends, best first (what prompt planning takes)."""
        return [scored.trend for scored in self.kept]


# ---------------------------------------------------------------------------------------------
# Ranking


def source_weights(sources: Iterable[TrendSource]) -> dict[str, float]:
    """Each source's `weight`, by name, for `rank_trends`."""
    return {source.name: source.weight for source in sources}


def _merge(cluster: Sequence[Trend]) -> Trend:
    """The leader with the cluster's best score, every tag and every other source."""
    leader = cluster[0]
    scores = [t.score for t in cluster if t.score is not None]
    sources = list(dict.fromkeys(s for t in cluster for s in t.sources))
    return leader.model_copy(update={
        "score": max(scores) if scores else None,
        "tags": list(dict.fromkeys(tag for t in cluster for tag in t.tags)),
        "also_in": [s for s in sources if s != leader.source],
    })


def _score(cluster: Sequence[Trend], merged: Trend, max_log_heat: float, now: datetime,
           config: RankingConfig, weights: Mapping[str, float]) -> tuple[float, ScoreParts]:
    weight = max(weights.get(s, 1.0) for s in merged.sources)
    rank = max(weights.get(t.source, 1.0) / math.sqrt(t.rank) for t in cluster)
    heat = 0.0
    if merged.score is not None and merged.score > 0 and max_log_heat > 0:
        heat = weight * math.log1p(merged.score) / max_log_heat
    dates = [t.published for t in cluster if t.published is not None]
    if dates:
        age_h = max(0.0, (now - max(dates)).total_seconds() / 3600)
        recency = 0.5 ** (age_h / config.half_life_h)
    else:
        recency = config.undated_recency
    agree = len(merged.sources) - 1
    score = (config.w_rank * rank + config.w_heat * heat + config.w_recency * recency
             + config.w_agree * agree)
    parts = ScoreParts(rank=round(rank, 6), heat=round(heat, 6), recency=round(recency, 6), agree=agree)
    return round(score, 6), parts


def _recently_used(keys: Sequence[str], history_keys: Sequence[str],
                   config: RankingConfig) -> str | None:
    """The history key that one of `keys` repeats or near-duplicates, else None."""
    for key in keys:
        if key in history_keys:
            return key
    for used in history_keys:
        if any(is_near_duplicate(key, used, config) for key in keys):
            return used
    return None


def rank_trends(
    report: TrendReport | Sequence[Trend],
    policy: SafetyPolicy | None = None,
    history_keys: Collection[str] = (),
    *,
    sensitive_terms: Iterable[str] = (),
    config: RankingConfig | None = None,
    now: datetime | None = None,
    weights: Mapping[str, float] | None = None,
    limit: int | None = None,
) -> RankedTrends:
    """Merge near-duplicates, drop unsafe, off-brand and recently used topics, score and sort the rest.

    Order: score desc, then normalized title, source and position, so it is deterministic.
    """
    config = config or RankingConfig()
    now = (now or datetime.now(UTC)).astimezone(UTC)
    weights = weights or {}
    trends = list(report.trends if isinstance(report, TrendReport) else report)
    terms = _terms(policy, sensitive_terms)
    fit = policy.fit if policy is not None else None
    history = sorted(set(history_keys))  # sorted: the same history key is named every time

    # 1. Merge near-duplicates (across sources and within one)
    clusters = cluster_trends(trends, config)
    heats = [math.log1p(t.score) for t in trends if t.score is not None and t.score > 0]
    max_log_heat = max(heats, default=0.0)

    kept: list[ScoredTrend] = []
    dropped: list[DroppedTrend] = []
    for cluster in clusters:
        merged = _merge(cluster)
        titles = list(dict.fromkeys(t.title for t in cluster))
        keys = list(dict.fromkeys(trend_key(t) for t in titles))

        # 2. Brand safety: any title or tag of the topic
        unsafe = _unsafe(titles, merged.tags, terms)
        if unsafe is not None:
            dropped.append(DroppedTrend(trend=merged, rule=unsafe[0], reason=unsafe[1]))
            continue

        # 3. Brand fit: no deny topic, and relevant enough (every title and tag of the topic)
        relevance = None
        if fit is not None:
            off_brand = fit_reason(titles, merged.tags, fit)
            if off_brand is not None:
                dropped.append(DroppedTrend(trend=merged, rule=off_brand[0], reason=off_brand[1]))
                continue
            relevance = relevance_score(titles, merged.tags, fit)

        # 4. Not again within the history window
        used = _recently_used(keys, history, config)
        if used is not None:
            reason = f"used recently for this brand (history has {used!r})"
            dropped.append(DroppedTrend(trend=merged, rule="history", reason=reason))
            continue

        # 5. Score
        score, parts = _score(cluster, merged, max_log_heat, now, config, weights)
        kept.append(ScoredTrend(trend=merged, score=score, sources=merged.sources,
                                variants=titles[1:], keys=keys, parts=parts,
                                relevance=relevance.score if relevance else None,
                                matched=relevance.matched if relevance else []))

    kept.sort(key=lambda s: (-s.score, s.trend.key, s.trend.source, s.trend.rank))
    report_failures = report.failures if isinstance(report, TrendReport) else []
    report_notes = report.notes if isinstance(report, TrendReport) else []
    return RankedTrends(kept=kept[:limit] if limit is not None else kept, dropped=dropped,
                        failures=report_failures, notes=report_notes)


# ---------------------------------------------------------------------------------------------
# History


class HistoryEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    title: str


class HistoryRecord(BaseModel):
    """One `record` call: which trends a brand used, and when."""

    model_config = ConfigDict(extra="forbid")

    brand: str
    used_at: datetime
    entries: list[HistoryEntry]


class TrendHistory:
    """Which trends each brand used, in the object store, so none is reused within N days.

    One object per `record` call (`<prefix>/<brand>/<YYYY-MM-DD>/<time>-<hash>.json`): writers
    never overwrite each other, and a window only reads the days it covers.
    """

    def __init__(self, store: ObjectStore, prefix: str = TRENDS_HISTORY) -> None:
        self.store = store
        self.prefix = prefix.strip("/")

    def _brand_prefix(self, brand: str) -> str:
        if not brand or "/" in brand or brand in (".", ".."):
            raise StoreError(f"invalid brand {brand!r} for trend history: use the brand's slug")
        return f"{self.prefix}/{brand}/"

    def record(self, brand: str, trends: Iterable[Trend | ScoredTrend], now: datetime) -> str | None:
        """Remember that `brand` used these trends at `now`; returns the key written (None if none)."""
        entries: list[HistoryEntry] = []
        for item in trends:
            titles = [item.trend.title, *item.variants] if isinstance(item, ScoredTrend) else [item.title]
            entries += [HistoryEntry(key=trend_key(title), title=title) for title in titles]
        if not entries:
            return None
        now = now.astimezone(UTC)
        record = HistoryRecord(brand=brand, used_at=now, entries=entries)
        body = record.model_dump_json(indent=2).encode("utf-8")
        digest = hashlib.sha256(body).hexdigest()[:12]
        key = f"{self._brand_prefix(brand)}{now:%Y-%m-%d}/{now:%H%M%S%f}-{digest}.json"
        self.store.put(key, body, "application/json", overwrite=True)
        return key

    def _records(self, brand: str, since: datetime) -> list[tuple[str, HistoryRecord]]:
        prefix = self._brand_prefix(brand)
        found = []
        for key in self.store.list(prefix):
            day = key[len(prefix):].split("/", 1)[0]
            if day < f"{since:%Y-%m-%d}":  # whole days before the window: not even read
                continue
            try:
                record = HistoryRecord.model_validate_json(self.store.get(key))
            except ValueError as exc:  # pydantic's ValidationError is a ValueError
                raise StoreError(f"unreadable trend history object {key!r}: {exc}") from exc
            found.append((key, record))
        return found

    def recent_keys(self, brand: str, days: float, now: datetime) -> set[str]:
        """Keys of the trends `brand` used in the `days` before `now` (exactly `days` ago: expired)."""
        since = now.astimezone(UTC) - timedelta(days=days)
        return {entry.key
                for _, record in self._records(brand, since) if record.used_at > since
                for entry in record.entries}

    def prune(self, brand: str, days: float, now: datetime) -> int:
        """Delete the records older than `days`; returns how many went."""
        since = now.astimezone(UTC) - timedelta(days=days)
        prefix = self._brand_prefix(brand)
        old = [key for key in self.store.list(prefix) if key[len(prefix):].split("/", 1)[0]
               < f"{since:%Y-%m-%d}"]
        for key in old:
            self.store.delete(key)
        return len(old)
