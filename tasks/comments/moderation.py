"""Comment moderation: the shared lexicon, matched through normalization, and prompt injection.

A comment (already cleaned by `tasks.comments.ledger.clean_text`) is screened in views that undo the
usual disguises, and a term of `configs/safety/comment-lexicon.txt` found in any view rejects it:

- Chinese view: case-folded, look-alike letters mapped, spaces, punctuation and symbols
  removed ("裸 体" -> "裸体"); and a Han-only copy ("裸a体" -> "裸体"). Chinese terms match
  anywhere in it (pyahocorasick: one pass for the whole lexicon).
- Word views: Chinese characters become pinyin tokens, other text becomes words with
  leetspeak undone ("n00d" -> "nood", "$ex" -> "sex"), runs of single letters joined
  ("n u d e" -> "nude"), once split at punctuation and once joined across it ("nu.de" ->
  "nude"), with "1/l/i" folded together (leetspeak's "1" is either). Latin terms and the pinyin
  of Chinese terms match whole tokens: " sex " never matches inside "Essex". A Latin term must
  come from Latin letters (滚 is "gun" in pinyin), and a pinyin hit needs at least one
  syllable typed in Latin letters ("luoti", "裸ti"; 自由落体 is not 裸体).

`instructions.txt` holds the words of prompt injection: `Lexicon.instruction_reason` rejects
a comment that tries to override the rules, and `never_keywords` keeps them out of prompts.
Load a lexicon with `load_lexicon` (cached per file; nothing is read at import).
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import regex

from tasks.core.errors import ConfigError

LEXICON_NAME = "configs/safety/comment-lexicon.txt"
INSTRUCTIONS_NAME = "instructions.txt"  # beside the lexicon
_NOT_CATEGORIES = ("allow", "no-pinyin")
_INSTRUCTION_SECTIONS = ("override", "targets", "markers", "verbs", "meta")
OVERRIDE_REACH_WORDS = 6  # "ignore [all of the previous] instructions": a target this close follows
OVERRIDE_REACH_CHARS = 8  # the same in Chinese characters: "忽略[掉所有的]规则"

_HAN = regex.compile(r"\p{Han}")
_HAN_WORD = regex.compile(r"\p{Han}{2,}")  # pinyin only for two characters or more
_HAN_RUNS = regex.compile(r"(\p{Han}+)|([^\p{Han}]+)")
_WORD = regex.compile(r"[^\W_]+")
_LETTER = regex.compile(r"[^\W\d_]")
_INVISIBLE = regex.compile(r"[\p{Cf}\p{Default_Ignorable_Code_Point}\p{Cs}]")
# Leetspeak: digits inside a word with letters, and symbols standing for letters.
_LEET_DIGITS = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t"})
_LEET_SYMBOLS = regex.compile(r"(?<=[^\W_])[!|+](?=[^\W_])|[@$]")
_LEET_SYMBOL_LETTERS = {"!": "i", "|": "i", "+": "t", "@": "a", "$": "s"}
_FOLD_ALIKE = str.maketrans({"l": "i"})  # "k1ll", "kiil" and "kill" look alike: fold l into i
# Scripts whose letters keep their own meaning even where Unicode calls them look-alikes.
_OWN_SCRIPTS = frozenset({"HAN", "HIRAGANA", "KATAKANA", "HANGUL", "BOPOMOFO"})


class LexiconError(ConfigError):
    """A lexicon or instructions file is missing, unreadable or has a bad line."""


# -- normalization ----------------------------------------------------------------------


@lru_cache(maxsize=1)
def _lookalikes() -> dict[int, str]:
    """Letters and digits of other scripts that Unicode's confusables list as one ASCII letter."""
    from confusable_homoglyphs import categories, confusables

    table: dict[int, str] = {}
    for char, homoglyphs in confusables.confusables_data.items():
        if (len(char) != 1 or char.isascii() or unicodedata.category(char)[0] not in "LN"
                or categories.alias(char) in _OWN_SCRIPTS):
            continue
        latin = next((h["c"] for h in homoglyphs if len(h["c"]) == 1 and h["c"].isascii()
                      and h["c"].isalnum()), None)
        if latin is not None:
            table[ord(char)] = latin.lower()
    return table


def fold(text: str) -> str:
    """NFKC, no invisible characters, case-folded, look-alike letters as their ASCII letter."""
    visible = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text))
    return visible.casefold().translate(_lookalikes())


def _squeeze(folded: str) -> str:
    """Without separators, punctuation, symbols or control characters ('裸 · 体' -> '裸体')."""
    return "".join(ch for ch in folded if unicodedata.category(ch)[0] not in "ZPSC")


def _pinyin(han: str) -> list[str]:
    """One pinyin syllable per character, without tones (ü as 'v', as typists write it)."""
    from pypinyin import lazy_pinyin

    return lazy_pinyin(han)


def _deleet(token: str) -> str:
    """Leetspeak digits as letters, in a token that has letters ('n00d' -> 'nood'; '2024' stays)."""
    return token.translate(_LEET_DIGITS) if _LETTER.search(token) else token


def _join_single_letters(tokens: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """Runs of two or more one-character Latin tokens as one token ('n','u','d','e' -> 'nude')."""
    joined: list[tuple[str, bool]] = []
    run: list[str] = []
    for text, latin in [*tokens, ("", False)]:
        if latin and len(text) == 1:
            run.append(text)
            continue
        if len(run) >= 2:
            joined.append(("".join(run), True))
        elif run:
            joined.append((run[0], True))
        run = []
        if text:
            joined.append((text, latin))
    return joined


@dataclass(frozen=True)
class WordView:
    """Tokens in one string, ' a b c ', with where each starts and whether it was typed in Latin."""

    text: str
    starts: tuple[int, ...]
    latin: tuple[bool, ...]

    @classmethod
    def of(cls, tokens: Sequence[tuple[str, bool]]) -> WordView:
        text, starts = " ", []
        for token, _latin in tokens:
            starts.append(len(text))
            text += token + " "
        return cls(text, tuple(starts), tuple(latin for _t, latin in tokens))

    def covered(self, start: int, end: int) -> list[int]:
        """Indices of the tokens inside text[start:end + 1]."""
        return [i for i, s in enumerate(self.starts) if start <= s <= end]


def word_views(folded: str) -> list[WordView]:
    """The comment as tokens twice: split at punctuation, and joined across it ('nu.de')."""
    split: list[tuple[str, bool]] = []
    joined: list[tuple[str, bool]] = []
    for han, other in (m.groups() for m in _HAN_RUNS.finditer(folded)):
        if han:
            syllables = [(s.translate(_FOLD_ALIKE), False) for s in _pinyin(han)]
            split += syllables
            joined += syllables
            continue
        for chunk in other.split():
            if _LETTER.search(chunk):
                chunk = _LEET_SYMBOLS.sub(lambda m: _LEET_SYMBOL_LETTERS[m[0]], chunk)
            words = _WORD.findall(chunk)
            split += [(w, True) for w in words]
            if words:
                joined.append(("".join(words), True))
    views = []
    for tokens in (split, joined):
        tokens = [(_deleet(t).translate(_FOLD_ALIKE) if latin else t, latin)
                  for t, latin in _join_single_letters(tokens)]
        views.append(WordView.of(tokens))
    return views


def skeleton_words(phrase: str) -> list[str]:
    """The tokens a Latin phrase matches as (what `word_views` makes of it, split form)."""
    return [word for word in word_views(fold(phrase))[0].text.split()]


# -- the lexicon file -------------------------------------------------------------------


def read_sections(path: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """`[name] label` sections of a term file: (name -> terms, name -> label)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise LexiconError(str(path), None, "lexicon file not found; check the path") from None
    except UnicodeDecodeError as exc:
        raise LexiconError(str(path), None, f"not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    terms: dict[str, list[str]] = {}
    labels: dict[str, str] = {}
    current: str | None = None
    for number, line in enumerate(lines, start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        header = regex.fullmatch(r"\[([a-z][a-z0-9-]*)\]\s*(.*)", content)
        if header:
            current = header[1]
            if current in terms:
                raise LexiconError(str(path), f"line {number}", "section appears twice", current)
            terms[current], labels[current] = [], header[2] or current
            continue
        if current is None:
            raise LexiconError(str(path), f"line {number}", "a term before the first [section] header; "
                               "start with e.g. '[sexual] sexual content'", content)
        if content.startswith("@include"):
            from tasks.trends.ranking import load_sensitive_terms  # the trend ranker's term-file format

            included = content.removeprefix("@include").strip()
            if not included:
                raise LexiconError(str(path), f"line {number}", "@include needs a file name", content)
            try:
                terms[current] += load_sensitive_terms(path.parent / included)
            except ConfigError as exc:
                raise LexiconError(str(path), f"line {number}", f"@include: {exc}", included) from None
            continue
        for term in (t.strip() for t in regex.split(r"[,，]", content)):
            if not term:  # a line may end with the comma before the next line's terms
                continue
            if not _squeeze(fold(term.rstrip("*"))):
                raise LexiconError(str(path), f"line {number}",
                                   "empty term: every entry needs a letter or a character", term)
            terms[current].append(term)
    return terms, labels


@dataclass(frozen=True)
class Hit:
    """A lexicon term found in a text: its category and how it was written."""

    category: str
    label: str
    term: str
    how: str  # "as written" | "written in pinyin" | "disguised"

    def reason(self) -> str:
        """A rejection reason naming the category, never the term."""
        return (f"contains a blocked term: {self.label} (category '{self.category}', "
                f"{self.how}; from the shared lexicon)")


@dataclass(frozen=True)
class _Pattern:
    category: str
    term: str
    kind: str  # "han" | "latin" | "pinyin"
    length: int


@dataclass
class Lexicon:
    """A compiled lexicon: categories of terms, allowed phrases and instruction words."""

    path: Path
    categories: dict[str, list[str]]
    labels: dict[str, str]
    allow: list[str] = field(default_factory=list)
    no_pinyin: frozenset[str] = frozenset()
    instructions: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import ahocorasick

        self._han = ahocorasick.Automaton()
        self._words = ahocorasick.Automaton()
        for category, terms in self.categories.items():
            for term in terms:
                self._add(category, term)
        for automaton in (self._han, self._words):
            if len(automaton):
                automaton.make_automaton()
        phrases = sorted({fold(p) for p in self.allow}, key=len, reverse=True)
        self._allow = (regex.compile("|".join(
            (r"(?<![^\W_])" if not _HAN.match(p[0]) else "") + regex.escape(p)
            + (r"(?![^\W_])" if not _HAN.match(p[-1]) else "") for p in phrases)) if phrases else None)
        words = {section: {" ".join(skeleton_words(e)) for e in self.instructions.get(section, [])
                           if not _HAN.search(e)}
                 for section in _INSTRUCTION_SECTIONS}
        self._instruction_words = words
        han = {section: [fold(e) for e in self.instructions.get(section, []) if _HAN.search(e)]
               for section in _INSTRUCTION_SECTIONS}
        self._instruction_han = han
        reach = OVERRIDE_REACH_CHARS
        self._override_han = (regex.compile(
            f"(?:{'|'.join(map(regex.escape, han['override']))}).{{0,{reach}}}?"
            f"(?:{'|'.join(map(regex.escape, han['targets']))})")
            if han["override"] and han["targets"] else None)
        never = {w for section in words.values() for w in section}
        self.never_keywords = frozenset(never | {w for section in han.values() for w in section})

    def _add(self, category: str, term: str) -> None:
        core = term.rstrip("*")
        prefix = term.endswith("*")
        if _HAN.search(core):
            key = _squeeze(fold(core))
            if key not in self._han:  # the first category to list a term keeps it
                self._han.add_word(key, _Pattern(category, term, "han", len(key)))
            if core in self.no_pinyin or not _HAN_WORD.fullmatch(core):
                return
            syllables = [s.translate(_FOLD_ALIKE) for s in _pinyin(core)]
            forms = {" ".join(syllables), "".join(syllables)}
            forms |= {f.replace("v", "u") for f in forms}  # 女: "nv" or "nu"
            for form in forms:
                self._add_words(f" {form} ", _Pattern(category, term, "pinyin", len(form) + 2))
            return
        for view in word_views(fold(core)):
            words = view.text.split()
            for form in {" ".join(words), "".join(words)}:
                pattern = f" {form}" + ("" if prefix else " ")
                self._add_words(pattern, _Pattern(category, term, "latin", len(pattern)))

    def _add_words(self, key: str, pattern: _Pattern) -> None:
        if key not in self._words:  # the first category to list a spelling keeps it
            self._words.add_word(key, pattern)

    def _mask(self, folded: str) -> str:
        return self._allow.sub(lambda m: " " * len(m[0]), folded) if self._allow else folded

    def find(self, text: str) -> Hit | None:
        """The first lexicon term in `text` (in any view), or None."""
        folded = self._mask(fold(text))
        plain = unicodedata.normalize("NFKC", text).casefold()  # to tell "as written" from disguised
        squeezed = _squeeze(folded)
        han_only = "".join(_HAN.findall(folded))
        if len(self._han):
            for view in (squeezed, han_only):
                found = next(self._han.iter(view), None)
                if found is not None:
                    return self._hit(found[1], plain)
        if len(self._words):
            for view in word_views(folded):
                for end, pattern in self._words.iter(view.text):
                    latin = [view.latin[i] for i in view.covered(end - pattern.length + 1, end)]
                    if pattern.kind == "latin" and all(latin):
                        return self._hit(pattern, plain)
                    if pattern.kind == "pinyin" and any(latin):
                        return self._hit(pattern, plain)
        return None

    def _hit(self, pattern: _Pattern, plain: str) -> Hit:
        core = pattern.term.rstrip("*").casefold()
        if pattern.kind == "pinyin":
            how = "written in pinyin"
        elif pattern.kind == "han":
            how = "as written" if core in plain else "disguised with spacing or other characters"
        else:
            seen = regex.search(r"(?<![^\W_])" + regex.escape(core)
                                + ("" if pattern.term.endswith("*") else r"(?![^\W_])"), plain)
            how = "as written" if seen else "disguised (spacing, look-alike letters or leetspeak)"
        return Hit(pattern.category, self.labels[pattern.category], pattern.term, how)

    def instruction_reason(self, text: str, meaningful: int) -> str | None:
        """Why `text` is an instruction to the image model rather than a comment, or None.

        `meaningful` is how many keywords the comment has to draw (after every filter).
        """
        folded = fold(text)
        words = self._instruction_words
        split_view = word_views(folded)[0]
        tokens = [t for t, latin in zip(split_view.text.split(), split_view.latin, strict=True) if latin]
        spaced = f" {' '.join(tokens)} "
        squeezed = _squeeze(folded)
        prefix = "instruction to the image model (category 'instruction'): "
        # 1. Marker phrases ("system prompt", "越狱")
        if (any(f" {m} " in spaced for m in words["markers"])
                or any(m in squeezed for m in self._instruction_han["markers"])):
            return prefix + "the comment uses a prompt-injection phrase"
        # 2. An override verb with its target close behind ("ignore the brand rules")
        for i, token in enumerate(tokens):
            if token in words["override"] and any(
                    t in words["targets"] for t in tokens[i + 1:i + 1 + OVERRIDE_REACH_WORDS]):
                return prefix + "the comment tries to set the reply's rules aside"
        if self._override_han is not None and self._override_han.search(squeezed):
            return prefix + "the comment tries to set the reply's rules aside"
        # 3. More commands than things to draw
        commands = sum(t in words["verbs"] for t in tokens)
        if _HAN.search(folded):
            verbs = set(self._instruction_han["verbs"])
            commands += sum(w in verbs for w in _segment(folded))
        if commands > meaningful:
            return prefix + (f"{commands} command(s) to the model and {meaningful} thing(s) to draw; "
                             "a reply draws what a comment is about, not what it orders")
        return None


def _segment(text: str) -> list[str]:
    """Chinese words of `text` (jieba, dictionary loaded once by the keyword tools)."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba.lcut(text)


def default_lexicon_path() -> Path:
    """`configs/safety/comment-lexicon.txt` of the working directory, else of the source tree."""
    here = Path(LEXICON_NAME)
    if here.is_file():
        return here
    return Path(__file__).resolve().parents[2] / LEXICON_NAME


@lru_cache(maxsize=8)
def _load(path: str) -> Lexicon:
    file = Path(path)
    terms, labels = read_sections(file)
    instructions, _labels = read_sections(file.parent / INSTRUCTIONS_NAME)
    unknown = sorted(set(instructions) - set(_INSTRUCTION_SECTIONS))
    if unknown:
        raise LexiconError(str(file.parent / INSTRUCTIONS_NAME), f"[{unknown[0]}]",
                           f"unknown section; use {', '.join(_INSTRUCTION_SECTIONS)}")
    categories = {name: t for name, t in terms.items() if name not in _NOT_CATEGORIES}
    if not categories:
        raise LexiconError(path, None, "no categories: add e.g. '[sexual] sexual content' and terms")
    return Lexicon(path=file, categories=categories, labels=labels,
                   allow=terms.get("allow", []), no_pinyin=frozenset(terms.get("no-pinyin", [])),
                   instructions=instructions)


def load_lexicon(path: str | Path | None = None) -> Lexicon:
    """The compiled lexicon at `path` (default: `default_lexicon_path()`), read once per file."""
    return _load(str(Path(path or default_lexicon_path()).resolve()))


def screen_terms(texts: Iterable[str], lexicon: Lexicon | None = None) -> list[tuple[str, Hit]]:
    """(text, hit) for each of `texts` that carries a lexicon term (used on finished prompts)."""
    lexicon = lexicon or load_lexicon()
    return [(text, hit) for text in texts if (hit := lexicon.find(text)) is not None]
