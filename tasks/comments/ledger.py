"""User comments: cleaning, moderation, keywords, request signatures and the comment ledger.

The intake service (`flows/services/intake.py`) answers HTTP with these plain functions; the
comment-reply flow reads the ledger to learn a comment's text and records its progress there.
A comment's text and keywords are DATA: they reach prompt templates as Jinja2 variables,
never as template source.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import lru_cache
from types import ModuleType
from typing import Annotated, Literal

import regex
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.comments.moderation import Lexicon, load_lexicon, skeleton_words
from tasks.config.schema import ReplyPolicy
from tasks.core.base import SLUG
from tasks.core.errors import StoreError, ZpipeError
from tasks.store.keys import COMMENTS
from tasks.store.objects import ObjectStore, find_hidden

ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"

# Format characters (zero-width spaces and joiners, bidi controls, BOM, tag characters) and
# every other default-ignorable code point (variation selectors, Hangul fillers, CGJ) draw
# nothing and only serve to hide words from filters; lone surrogates cannot be stored.
_INVISIBLE = regex.compile(r"[\p{Cf}\p{Default_Ignorable_Code_Point}\p{Cs}]")
_MAX_KEYWORD_CHARS = 32  # a longer token is a URL or noise, not something to draw
# jieba part-of-speech tags worth drawing: nouns (people, places, brands, verbal nouns),
# adjectives, time and place words (秋天, 周末), idioms and English words. Not verbs: a verb of
# a comment is what it asks for (画, 生成, 忽略), not what it is about; nor pronouns, measure
# words or particles. English has no tagger here: stop words and instruction words go instead.
_KEYWORD_POS = ("n", "nr", "ns", "nt", "nz", "nw", "vn", "a", "an", "t", "s", "i", "eng")
_MIN_LATIN_KEYWORD = 2  # one letter is not something to draw

CommentId = Annotated[str, Field(pattern=ID_PATTERN, description="the platform's comment id")]
State = Literal["queued", "running", "done", "held", "failed", "rejected"]  # held: by the QA gate


class LedgerError(ZpipeError):
    """The comment ledger has no record for an id, or was asked for an invalid change."""


class Comment(BaseModel):
    """A user comment as the intake receives it (text not yet moderated)."""

    model_config = ConfigDict(extra="forbid")

    id: CommentId
    author: str = Field(min_length=1, max_length=128)
    text: str = Field(min_length=1, max_length=10000)
    post_id: str = Field(min_length=1, max_length=256)
    brand: str = Field(pattern=SLUG.pattern, description="slug of a brand the intake serves")

    @field_validator("author", "post_id")
    @classmethod
    def _visible(cls, value: str) -> str:
        """Ids end up in the ledger and in rate-limit keys: no control or invisible characters."""
        hidden = find_hidden(value)
        if hidden is not None:
            position, char = hidden
            raise ValueError(f"contains the invisible or control character U+{ord(char):04X} "
                             f"at position {position}; send the platform's id as it is shown")
        return value


class CommentState(BaseModel):
    """One comment's ledger record: its cleaned text, keywords and where it is in the pipeline."""

    model_config = ConfigDict(extra="forbid")

    id: CommentId
    brand: str
    author: str
    post_id: str
    text: str = Field(description="the cleaned text")
    keywords: list[str] = Field(default_factory=list)
    state: State
    image_key: str | None = None
    flow_run_id: str | None = None  # the Prefect run answering it: a flow run, or a fast-path task run
    reason: str | None = None
    received_at: datetime
    updated_at: datetime
    fingerprint: str | None = Field(
        default=None, description="content_fingerprint of the comment as first received; None in "
                                  "records written before fingerprints (any re-send matches those)")


# -- text ---------------------------------------------------------------------------


def clean_text(text: str) -> str:
    """NFKC-normalise, drop control and invisible characters, collapse whitespace to single spaces."""
    kept = []
    for ch in text:
        if unicodedata.category(ch) == "Cc":
            if ch.isspace():  # \t \n \r and friends separate words: keep them as a space
                kept.append(" ")
            continue
        kept.append(ch)
    visible = _INVISIBLE.sub("", "".join(kept))
    return " ".join(unicodedata.normalize("NFKC", visible).split())


def _squeeze(text: str) -> str:
    """Case-folded text without separators, punctuation or symbols ('加 微·信' -> '加微信')."""
    return "".join(ch for ch in text.casefold() if unicodedata.category(ch)[0] not in "ZPS")


def moderate(text: str, policy: ReplyPolicy, lexicon: Lexicon | None = None) -> tuple[str, str | None]:
    """Return (cleaned text, rejection reason or None) under a brand's reply policy.

    In order: no visible text; too long; a term of the brand's `replies.blocklist` (named);
    a term of the shared lexicon (`tasks.comments.moderation`, its category named, not the term); an
    instruction to the image model instead of a comment. `lexicon` defaults to the shipped one.
    """
    cleaned = clean_text(text)
    if not cleaned:
        return cleaned, "empty after cleaning: the comment has no visible text"
    if len(cleaned) > policy.max_chars:
        return cleaned, (f"too long: {len(cleaned)} characters after cleaning "
                         f"(limit {policy.max_chars})")
    # 1. The brand's own terms: substrings, ignoring case, width, spaces and punctuation
    folded, squeezed = cleaned.casefold(), _squeeze(cleaned)
    for term in policy.blocklist:
        needle = clean_text(term).casefold()
        if needle and (needle in folded or (_squeeze(needle) and _squeeze(needle) in squeezed)):
            return cleaned, f"contains the blocked term {term!r} (the brand's replies.blocklist)"
    # 2. The shared lexicon, through normalization (width, look-alikes, leetspeak, pinyin)
    lexicon = lexicon or load_lexicon()
    hit = lexicon.find(cleaned)
    if hit is not None:
        return cleaned, hit.reason()
    # 3. Prompt injection: orders to the model rather than a comment about something
    return cleaned, lexicon.instruction_reason(cleaned, _count_subjects(cleaned, lexicon))


def _count_subjects(text: str, lexicon: Lexicon) -> int:
    """How many different things a comment names: drawable nouns and adjectives, one-character
    words too (画一只猫 names 猫, which the TF-IDF keywords skip)."""
    import jieba.posseg

    _analyse, stop = _keyword_tools()
    return len({pair.word.casefold() for pair in jieba.posseg.cut(text)
                if pair.flag in _KEYWORD_POS and _drawable(pair.word, stop, lexicon)})


@lru_cache(maxsize=1)
def _keyword_tools() -> tuple[ModuleType, frozenset[str]]:
    """jieba's keyword extractor (dictionary loaded) and Chinese + English stop words."""
    import jieba
    import jieba.analyse
    import jieba.posseg  # loaded here, not by the first comment
    from stop_words import get_stop_words

    jieba.setLogLevel(logging.WARNING)  # it logs dictionary loading at DEBUG to stderr
    jieba.initialize()
    stop = frozenset(w.casefold() for lang in ("en", "zh") for w in get_stop_words(lang))
    return jieba.analyse, stop


def warm_keywords() -> None:
    """Load the segmentation dictionary and the lexicon now (seconds) instead of on the first comment."""
    _keyword_tools()
    load_lexicon().find("预热 warm-up")  # also loads the pinyin and look-alike tables


def _drawable(word: str, stop: frozenset[str], lexicon: Lexicon) -> bool:
    """A keyword worth drawing: a word, not a stop word, an instruction or a blocked term."""
    folded = word.casefold()
    if folded in stop or len(word) > _MAX_KEYWORD_CHARS or not any(ch.isalpha() for ch in word):
        return False
    if word.isascii() and len(word) < _MIN_LATIN_KEYWORD:
        return False
    never = lexicon.never_keywords
    if folded in never or " ".join(skeleton_words(word)) in never:  # "draw", "d.r.a.w", "画"
        return False
    return lexicon.find(word) is None  # a blocked word never reaches a prompt, whatever came before


# How templates join keywords: "a, b" (English), "a、b" (Chinese); a plain space for good measure
_KEYWORD_JOINS = (", ", "、", " ")


def _joins_cleanly(kept: list[str], word: str, lexicon: Lexicon) -> bool:
    """True when `word` after `kept` forms no lexicon term across keywords, joined as templates
    join them: "school" and "shooting" are harmless alone, not side by side."""
    return not kept or all(lexicon.find(join.join([*kept, word])) is None for join in _KEYWORD_JOINS)


def drawable_keywords(keywords: Iterable[str], limit: int = 5, lexicon: Lexicon | None = None) -> list[str]:
    """The recorded keywords still fit for a prompt, at most `limit` (a ledger record may predate
    the current lexicon, or have been written by another tool)."""
    _analyse, stop = _keyword_tools()
    lexicon = lexicon or load_lexicon()
    kept: list[str] = []
    for word in keywords:
        if len(kept) == limit:
            break
        if _drawable(word, stop, lexicon) and _joins_cleanly(kept, word, lexicon):
            kept.append(word)
    return kept


def extract_keywords(text: str, limit: int = 5, lexicon: Lexicon | None = None) -> list[str]:
    """Up to `limit` keywords of a cleaned comment (Chinese and English), most telling first.

    Only nouns, adjectives and English words that are not stop words, instructions to the
    model ("ignore", "draw", "画") or lexicon terms.
    """
    if limit < 1:
        return []
    analyse, stop = _keyword_tools()
    lexicon = lexicon or load_lexicon()
    keywords: list[str] = []
    seen: set[str] = set()
    for word in analyse.extract_tags(text, topK=None, allowPOS=_KEYWORD_POS):  # TF-IDF ranking
        folded = word.casefold()
        if (folded in seen or not _drawable(word, stop, lexicon)
                or not _joins_cleanly(keywords, word, lexicon)):
            continue
        seen.add(folded)
        keywords.append(word)
        if len(keywords) == limit:
            break
    return keywords


# -- ledger -------------------------------------------------------------------------

# What a comment is: who wrote what, under which post, for which brand. The id only names it
# (an idempotency key), so the same id with any of these changed is another comment (a 409).
FINGERPRINT_FIELDS = ("brand", "author", "post_id", "text")


def _now() -> datetime:
    return datetime.now(UTC)


def content_fingerprint(comment: Comment) -> str:
    """`sha256:<hex>` of the comment's FINGERPRINT_FIELDS as received (text before cleaning).

    Canonical JSON (sorted keys, no spaces, UTF-8): the same fields in another JSON spelling
    (key order, whitespace, escapes) give the same fingerprint.
    """
    fields = {name: getattr(comment, name) for name in FINGERPRINT_FIELDS}
    canonical = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


class CommentLedger:
    """One JSON record per comment at `{prefix}/{id}.json` in an object store."""

    def __init__(self, store: ObjectStore, prefix: str = COMMENTS):
        self.store = store
        self.prefix = prefix.strip("/")

    def _key(self, comment_id: str) -> str:
        if not re.fullmatch(ID_PATTERN, comment_id):
            raise LedgerError(f"invalid comment id {comment_id[:40]!r}: use 1-128 of A-Z a-z 0-9 _ . : -")
        return f"{self.prefix}/{comment_id}.json"

    def _write(self, state: CommentState, overwrite: bool) -> bool:
        data = state.model_dump_json().encode()
        return self.store.put(self._key(state.id), data, "application/json", overwrite=overwrite)

    def claim(self, state: CommentState) -> tuple[CommentState, bool]:
        """Write `state` if its id is new: (state, True); else (the stored record, False)."""
        if self._write(state, overwrite=False):
            return state, True
        stored = self.get(state.id)
        if stored is None:  # deleted between our put and get: the claim is lost all the same
            raise StoreError(f"comment {state.id!r} vanished from {self.store.describe()} during a claim")
        return stored, False

    def _take(self, record: CommentState, purpose: str, owner: str = "") -> bool:
        """True for exactly one of the concurrent callers taking over this version of `record`
        (and again for the same non-empty `owner`, so a retried claim keeps what it won)."""
        stamp = int(record.updated_at.timestamp() * 1_000_000)  # one winner per record version
        marker = f"{self.prefix}/.{purpose}/{record.id}/{stamp}"
        if self.store.put(marker, owner.encode(), "text/plain", overwrite=False):
            return True
        return bool(owner) and self.store.get(marker) == owner.encode()

    def requeue(self, failed: CommentState, **changes: object) -> tuple[CommentState, bool]:
        """Take over a failed record for a retry: of concurrent callers exactly one wins (True)."""
        if failed.state != "failed":
            raise LedgerError(f"comment {failed.id!r} is {failed.state}, not failed: nothing to requeue")
        if not self._take(failed, "retries"):
            current = self.get(failed.id)
            return (current or failed), False
        return self.update(failed.id, **changes), True

    def start(self, comment_id: str, run_id: str,
              is_running: Callable[[str], bool]) -> tuple[CommentState, bool]:
        """Claim a comment for the reply run `run_id`: (record, True) means this run answers it.

        Events can come twice, late or out of order, so exactly one run may answer a comment:
        - done, held (the QA gate held its image for a reviewer) or rejected: nobody (a late
          or repeated event);
        - running under `run_id` itself (a retry of this run): this run;
        - running under another run that `is_running`: that run, not this one;
        - queued, failed, or running under a run that is gone: one of the concurrent callers.
        """
        current = self.get(comment_id)
        if current is None:
            raise LedgerError(f"no comment {comment_id!r} in the ledger at {self.store.describe()}: "
                              "the intake records a comment before it emits its event")
        if current.state in ("done", "held", "rejected"):
            return current, False
        if current.state == "running" and current.flow_run_id:
            if current.flow_run_id == run_id:
                return current, True
            if is_running(current.flow_run_id):
                return current, False
        if not self._take(current, "runs", owner=run_id):
            return (self.get(comment_id) or current), False
        return self.update(comment_id, state="running", flow_run_id=run_id, reason=None), True

    def get(self, comment_id: str) -> CommentState | None:
        """The record of `comment_id`, or None if the ledger has none."""
        key = self._key(comment_id)
        try:
            data = self.store.get(key)
        except StoreError:
            if not self.store.exists(key):
                return None
            data = self.store.get(key)  # claimed between the two calls (or a real error: raised)
        return CommentState.model_validate_json(data)

    def update(self, comment_id: str, **changes: object) -> CommentState:
        """Change fields of a record (read-modify-write; the last writer wins) and stamp updated_at."""
        current = self.get(comment_id)
        if current is None:
            raise LedgerError(f"no comment {comment_id!r} in the ledger at {self.store.describe()}")
        try:
            updated = CommentState.model_validate(
                {**current.model_dump(), **changes, "updated_at": _now()}
            )
        except ValidationError as exc:
            raise LedgerError(f"invalid change to comment {comment_id!r}: {exc.errors()[0]['msg']} "
                              f"(fields {sorted(changes)})") from None
        self._write(updated, overwrite=True)
        return updated
