"""Campaign rules: conditions on a day/format/variant/trend, actions on its prompt.

A campaign's `rules:` list is applied, in order, to every slot (day x format x variant):

```yaml
rules:
  - name: spring-festival
    when: {festival: [春节]}               # every listed condition must hold (AND) ...
    then:                                  # ... and each list matches any of its entries
      template: festival-poster            # switch the template (the last rule that sets it wins)
      add: {part: scene, zh: [红灯笼], en: [red lanterns]}   # append prompt elements (accumulate)
      copy: {zh: 新春快乐, en: Happy Spring Festival}          # the in-image copy (last wins)
  - name: no-stories-on-sunday
    when: {weekday: [sun], format: ["9:16"]}
    then: {skip: true}                     # no image for this slot; later rules are not applied
```

Conditions: `festival` (key, Chinese or English name, or alias of a festival on the day),
`festival_kind` (chinese | solar_term | shopping | western), `weekday` (mon..sun), `format`,
`variant` (1-based), `trend_tags` (any tag of the day's trend), `trend_keywords` (a word
in the day's trend title). Matching is pure: `apply_rules` takes data and returns data.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.core.base import SLUG, Strict
from tasks.prompts.calendar import Festival, FestivalKind, catalogue, is_known
from tasks.prompts.templates import BilingualText

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Part = Literal["subject", "action", "scene", "lighting", "style"]  # == tasks.prompts.templates.PARTS


class RuleWhen(Strict):
    """Conditions: all given ones must hold; within a list, any entry matches."""

    festival: list[str] = Field(default_factory=list)
    festival_kind: list[FestivalKind] = Field(default_factory=list)
    weekday: list[Weekday] = Field(default_factory=list)
    format: list[str] = Field(default_factory=list)
    variant: list[int] = Field(default_factory=list)
    trend_tags: list[str] = Field(default_factory=list)
    trend_keywords: list[str] = Field(default_factory=list)

    @field_validator("festival")
    @classmethod
    def _known_festivals(cls, value: list[str]) -> list[str]:
        for name in value:
            if not is_known(name):
                known = ", ".join(f"{zh} ({key})" for key, zh, _, kind in catalogue()
                                  if kind != "solar_term")
                raise ValueError(f"unknown festival {name!r}; use a key, Chinese or English name, "
                                 f"e.g. {known}, or a solar term such as 立春 / lichun")
        return value

    @field_validator("variant")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError(f"variants are numbered from 1 (got {value})")
        return value


class RuleAdd(Strict):
    """Prompt elements appended to one part, in both languages."""

    part: Part = "scene"
    zh: list[str] = Field(min_length=1)
    en: list[str] = Field(min_length=1)


class RuleThen(Strict):
    """Actions of a rule that fired."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    template: str | None = Field(default=None, description="switch to this prompt template")
    add: list[RuleAdd] = Field(default_factory=list, description="prompt elements to append")
    copy_text: BilingualText | None = Field(default=None, alias="copy", description="short in-image text")
    skip: bool = Field(default=False, description="make no image for this slot")

    @field_validator("add", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _does_something(self) -> RuleThen:
        acts = self.template is not None or bool(self.add) or self.copy_text is not None
        if self.skip and acts:
            raise ValueError("skip: true makes no image, so template/add/copy would be ignored; "
                             "split them into two rules")
        if not self.skip and not acts:
            raise ValueError("a rule must do something: set template, add, copy or skip")
        return self


class Rule(Strict):
    """One named rule: when all conditions hold, its actions apply."""

    name: str = Field(pattern=SLUG.pattern, description="slug, recorded per image")
    when: RuleWhen = Field(default_factory=RuleWhen)
    then: RuleThen


class Slot(BaseModel):
    """What rules may look at for one image: the day, format, variant and the day's trend."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    day: date
    weekday: str
    format: str
    variant: int
    festivals: list[Festival] = Field(default_factory=list)
    trend: Any = None  # a tasks.trends.sources.Trend or None; `tags` are read when it has them


class RuleOutcome(BaseModel):
    """The rules' verdict for one slot."""

    model_config = ConfigDict(extra="forbid")

    template: str
    additions: dict[str, dict[str, list[str]]] = Field(default_factory=dict)
    copy_text: BilingualText | None = None
    copy_rule: str | None = None
    skip: bool = False
    fired: list[str] = Field(default_factory=list)


def trend_tags(trend: Any) -> list[str]:
    """A trend's tags, or [] for a trend without them (older Trend models, None)."""
    tags = getattr(trend, "tags", None) if trend is not None else None
    if tags is None and isinstance(trend, dict):
        tags = trend.get("tags")
    return [str(t) for t in (tags or [])]


def _trend_title(trend: Any) -> str:
    if trend is None:
        return ""
    title = trend.get("title") if isinstance(trend, dict) else getattr(trend, "title", "")
    return str(title or "")


def matches(when: RuleWhen, slot: Slot) -> bool:
    """True when every condition given in `when` holds for `slot`."""
    if when.festival and not any(f.matches(n) for f in slot.festivals for n in when.festival):
        return False
    if when.festival_kind and not any(f.kind in when.festival_kind for f in slot.festivals):
        return False
    if when.weekday and slot.weekday not in when.weekday:
        return False
    if when.format and slot.format not in when.format:
        return False
    if when.variant and slot.variant not in when.variant:
        return False
    if when.trend_tags:
        tags = {t.casefold() for t in trend_tags(slot.trend)}
        if not tags & {t.casefold() for t in when.trend_tags}:
            return False
    if when.trend_keywords:
        title = _trend_title(slot.trend).casefold()
        if not any(k.casefold() in title for k in when.trend_keywords):
            return False
    return True


def apply_rules(rules: Sequence[Rule], slot: Slot, template: str) -> RuleOutcome:
    """Apply `rules` in order to one slot, starting from the campaign's `template`."""
    outcome = RuleOutcome(template=template)
    for rule in rules:
        if not matches(rule.when, slot):
            continue
        outcome.fired.append(rule.name)
        act = rule.then
        if act.skip:
            outcome.skip = True
            return outcome
        if act.template is not None:
            outcome.template = act.template
        for add in act.add:
            into = outcome.additions.setdefault(add.part, {"zh": [], "en": []})
            into["zh"].extend(add.zh)
            into["en"].extend(add.en)
        if act.copy_text is not None:
            outcome.copy_text, outcome.copy_rule = act.copy_text, rule.name
    return outcome
