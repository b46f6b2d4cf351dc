"""The content calendar: Chinese festivals, the 24 solar terms, shopping days, Western holidays.

Pure functions of a date, computed for any year, offline:
- lunar festivals (春节, 元宵, 端午, 七夕, 中秋, 重阳, and 除夕) and the 24 solar terms come
  from `lunar-python` (a port of the 寿星万年历 astronomical calendar, Beijing time);
- 清明 is listed as a Chinese festival (kind `chinese`) on the day of the 清明 solar term;
- Western holidays come from `holidays` (its US calendar, public + unofficial categories),
  plus Black Friday (the day after Thanksgiving);
- shopping days (618, 双十一, 双十二) are fixed dates.

Templates see a day's festivals as `festivals` / `festival`; campaign rules match them by
key, Chinese name, English name or alias (`Festival.matches`).
"""

from __future__ import annotations

import functools
from datetime import date, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict

FestivalKind = Literal["chinese", "solar_term", "shopping", "western"]
KINDS: tuple[FestivalKind, ...] = ("chinese", "shopping", "western", "solar_term")  # priority order

MIN_YEAR, MAX_YEAR = 1901, 2099  # the range both libraries are checked for


class Festival(BaseModel):
    """One festival, holiday or solar term on one date."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str  # slug, stable across languages: "spring-festival", "double-11", "lichun"
    name_zh: str
    name_en: str
    kind: FestivalKind
    date: date
    aliases: tuple[str, ...] = ()

    def matches(self, name: str) -> bool:
        """True if `name` is this festival's key, Chinese or English name, or an alias."""
        wanted = _norm(name)
        return any(_norm(n) == wanted for n in (self.key, self.name_zh, self.name_en, *self.aliases))

    def as_variable(self) -> dict[str, str]:
        """The template variable: {key, zh, en, kind, date}."""
        return {"key": self.key, "zh": self.name_zh, "en": self.name_en, "kind": self.kind,
                "date": self.date.isoformat()}


def _norm(name: str) -> str:
    return " ".join(name.split()).casefold().replace("’", "'")


# --- The catalogue ------------------------------------------------------------------------
# (key, zh, en, lunar month, lunar day, aliases)
_LUNAR = (
    ("spring-festival", "春节", "Spring Festival", 1, 1, ("Chinese New Year", "Lunar New Year", "农历新年")),
    ("lantern-festival", "元宵", "Lantern Festival", 1, 15, ("元宵节",)),
    ("dragon-boat", "端午", "Dragon Boat Festival", 5, 5, ("端午节",)),
    ("qixi", "七夕", "Qixi Festival", 7, 7, ("七夕节", "Chinese Valentine's Day")),
    ("mid-autumn", "中秋", "Mid-Autumn Festival", 8, 15, ("中秋节", "Moon Festival")),
    ("double-ninth", "重阳", "Double Ninth Festival", 9, 9, ("重阳节",)),
)
_CHUXI = ("chuxi", "除夕", "Chinese New Year's Eve", ("大年三十", "Lunar New Year's Eve"))
_QINGMING = ("qingming", "清明", "Qingming Festival", ("清明节", "Tomb-Sweeping Day", "Clear and Bright"))

# The 24 solar terms in calendar order from January: (key, zh, en)
SOLAR_TERMS = (
    ("xiaohan", "小寒", "Minor Cold"), ("dahan", "大寒", "Major Cold"),
    ("lichun", "立春", "Start of Spring"), ("yushui", "雨水", "Rain Water"),
    ("jingzhe", "惊蛰", "Awakening of Insects"), ("chunfen", "春分", "Spring Equinox"),
    ("qingming", "清明", "Clear and Bright"), ("guyu", "谷雨", "Grain Rain"),
    ("lixia", "立夏", "Start of Summer"), ("xiaoman", "小满", "Grain Buds"),
    ("mangzhong", "芒种", "Grain in Ear"), ("xiazhi", "夏至", "Summer Solstice"),
    ("xiaoshu", "小暑", "Minor Heat"), ("dashu", "大暑", "Major Heat"),
    ("liqiu", "立秋", "Start of Autumn"), ("chushu", "处暑", "End of Heat"),
    ("bailu", "白露", "White Dew"), ("qiufen", "秋分", "Autumn Equinox"),
    ("hanlu", "寒露", "Cold Dew"), ("shuangjiang", "霜降", "Frost's Descent"),
    ("lidong", "立冬", "Start of Winter"), ("xiaoxue", "小雪", "Minor Snow"),
    ("daxue", "大雪", "Major Snow"), ("dongzhi", "冬至", "Winter Solstice"),
)
# lunar-python names the terms of the neighbouring years in upper-case pinyin
_PINYIN_TERMS = {key.upper(): zh for key, zh, _ in SOLAR_TERMS} | {
    "DA_XUE": "大雪", "DONG_ZHI": "冬至", "XIAO_HAN": "小寒", "DA_HAN": "大寒", "LI_CHUN": "立春",
    "YU_SHUI": "雨水", "JING_ZHE": "惊蛰"}

# (key, zh, en, month, day, aliases)
_SHOPPING = (
    ("618", "618购物节", "618 Shopping Festival", 6, 18, ("618", "年中大促")),
    ("double-11", "双十一", "Singles' Day", 11, 11, ("双11", "11.11", "Double 11")),
    ("double-12", "双十二", "Double 12", 12, 12, ("双12", "12.12")),
)

# `holidays` US names (public + unofficial) -> (key, zh, en, aliases)
_WESTERN = {
    "New Year's Day": ("new-year", "元旦", "New Year's Day", ("新年",)),
    "Valentine's Day": ("valentines-day", "情人节", "Valentine's Day", ("西方情人节",)),
    "Easter Sunday": ("easter", "复活节", "Easter", ("Easter Sunday",)),
    "Mother's Day": ("mothers-day", "母亲节", "Mother's Day", ()),
    "Father's Day": ("fathers-day", "父亲节", "Father's Day", ()),
    "Halloween": ("halloween", "万圣节", "Halloween", ()),
    "Thanksgiving Day": ("thanksgiving", "感恩节", "Thanksgiving", ("Thanksgiving Day",)),
    "Christmas Eve": ("christmas-eve", "平安夜", "Christmas Eve", ()),
    "Christmas Day": ("christmas", "圣诞节", "Christmas", ("Christmas Day",)),
}
_BLACK_FRIDAY = ("black-friday", "黑色星期五", "Black Friday", ("黑五",))


# --- Computing a year -----------------------------------------------------------------------


def _check_year(year: int) -> None:
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise ValueError(f"festival dates are computed for {MIN_YEAR}-{MAX_YEAR} (got {year})")


def _lunar_to_solar(year: int, month: int, day: int) -> date:
    from lunar_python import Lunar  # imported on first use: nothing happens at import time

    solar = Lunar.fromYmd(year, month, day).getSolar()  # a positive month is never the leap one
    return date(solar.getYear(), solar.getMonth(), solar.getDay())


@functools.lru_cache(maxsize=256)
def solar_terms(year: int) -> tuple[Festival, ...]:
    """The 24 solar terms of a Gregorian year, in date order (Beijing time)."""
    from lunar_python import Solar

    _check_year(year)
    by_zh = {zh: (key, en) for key, zh, en in SOLAR_TERMS}
    found: dict[str, date] = {}
    # a mid-year lunar date's table spans the previous December to the next March
    for name, solar in Solar.fromYmd(year, 7, 1).getLunar().getJieQiTable().items():
        zh = _PINYIN_TERMS.get(name, name)
        if solar.getYear() == year and zh in by_zh:
            found[zh] = date(solar.getYear(), solar.getMonth(), solar.getDay())
    if len(found) != len(SOLAR_TERMS):  # the library changed shape: fail loudly, not quietly
        missing = sorted(set(by_zh) - set(found))
        raise RuntimeError(f"lunar-python gave {len(found)} solar terms for {year}; missing {missing}")
    terms = [Festival(key=by_zh[zh][0], name_zh=zh, name_en=by_zh[zh][1], kind="solar_term", date=d)
             for zh, d in found.items()]
    return tuple(sorted(terms, key=lambda f: f.date))


def _western(year: int) -> list[Festival]:
    import holidays

    calendar = holidays.country_holidays("US", years=year, categories=("public", "unofficial"))
    found: list[Festival] = []
    for day in sorted(calendar):
        for name in calendar.get_list(day):  # "(observed)" days have other names: skipped
            if name in _WESTERN:
                key, zh, en, aliases = _WESTERN[name]
                found.append(Festival(key=key, name_zh=zh, name_en=en, kind="western", date=day,
                                      aliases=aliases))
                if key == "thanksgiving":
                    key, zh, en, aliases = _BLACK_FRIDAY
                    found.append(Festival(key=key, name_zh=zh, name_en=en, kind="western",
                                          date=day + timedelta(days=1), aliases=aliases))
    return found


@functools.lru_cache(maxsize=256)
def festivals_in(year: int) -> tuple[Festival, ...]:
    """Every festival, shopping day, Western holiday and solar term of a Gregorian year."""
    _check_year(year)
    found: list[Festival] = []
    # 1. Lunar festivals (除夕 is the eve of 春节, the last day of the previous lunar year)
    for key, zh, en, month, day, aliases in _LUNAR:
        found.append(Festival(key=key, name_zh=zh, name_en=en, kind="chinese",
                              date=_lunar_to_solar(year, month, day), aliases=aliases))
    spring = found[0].date
    key, zh, en, aliases = _CHUXI
    found.append(Festival(key=key, name_zh=zh, name_en=en, kind="chinese",
                          date=spring - timedelta(days=1), aliases=aliases))
    # 2. Solar terms; 清明 is the festival itself
    for term in solar_terms(year):
        if term.key == "qingming":
            key, zh, en, aliases = _QINGMING
            term = term.model_copy(update={"kind": "chinese", "name_en": en, "aliases": aliases})
        found.append(term)
    # 3. Shopping days and Western holidays
    for key, zh, en, month, day, aliases in _SHOPPING:
        found.append(Festival(key=key, name_zh=zh, name_en=en, kind="shopping",
                              date=date(year, month, day), aliases=aliases))
    found.extend(_western(year))
    return tuple(sorted(found, key=lambda f: (f.date, KINDS.index(f.kind))))


def festivals_on(day: date) -> list[Festival]:
    """The festivals on one day, most marketing-relevant kind first (chinese, shopping, ...)."""
    return [f for f in festivals_in(day.year) if f.date == day]


@functools.lru_cache(maxsize=1)
def known_names() -> frozenset[str]:
    """Every name a rule may use for a festival (normalised: keys, zh, en, aliases)."""
    names: set[str] = set()
    for festival in festivals_in(2027):  # every festival occurs every year
        names.update(_norm(n) for n in (festival.key, festival.name_zh, festival.name_en,
                                         *festival.aliases))
    for key, zh, en in SOLAR_TERMS:
        names.update(_norm(n) for n in (key, zh, en))
    return frozenset(names)


def is_known(name: str) -> bool:
    """True if `name` names some festival, holiday, shopping day or solar term."""
    return _norm(name) in known_names()


def catalogue() -> list[tuple[str, str, str, str]]:
    """(key, zh, en, kind) of every festival, for error messages and docs."""
    seen: dict[str, tuple[str, str, str, str]] = {}
    for festival in festivals_in(2027):
        seen.setdefault(festival.key, (festival.key, festival.name_zh, festival.name_en,
                                       festival.kind))
    return list(seen.values())
