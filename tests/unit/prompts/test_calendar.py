"""The content calendar: festival dates checked against published calendars for several years."""

from __future__ import annotations

from datetime import date

import pytest

from tasks.prompts.calendar import (
    SOLAR_TERMS,
    Festival,
    catalogue,
    festivals_in,
    festivals_on,
    is_known,
    solar_terms,
)

# Published dates (State Council holiday notices, Hong Kong Observatory calendar, timeanddate).
PUBLISHED = {
    "春节": ["2024-02-10", "2025-01-29", "2026-02-17", "2027-02-06"],
    "除夕": ["2024-02-09", "2025-01-28", "2026-02-16", "2027-02-05"],
    "元宵": ["2024-02-24", "2025-02-12", "2026-03-03", "2027-02-20"],
    "清明": ["2024-04-04", "2025-04-04", "2026-04-05", "2027-04-05"],
    "端午": ["2024-06-10", "2025-05-31", "2026-06-19", "2027-06-09"],
    "七夕": ["2024-08-10", "2025-08-29", "2026-08-19", "2027-08-08"],
    "中秋": ["2024-09-17", "2025-10-06", "2026-09-25", "2027-09-15"],
    "重阳": ["2024-10-11", "2025-10-29", "2026-10-18", "2027-10-08"],
    # shopping days and Western holidays
    "双十一": ["2024-11-11", "2025-11-11", "2026-11-11", "2027-11-11"],
    "复活节": ["2024-03-31", "2025-04-20", "2026-04-05", "2027-03-28"],
    "母亲节": ["2024-05-12", "2025-05-11", "2026-05-10", "2027-05-09"],
    "感恩节": ["2024-11-28", "2025-11-27", "2026-11-26", "2027-11-25"],
    "黑色星期五": ["2024-11-29", "2025-11-28", "2026-11-27", "2027-11-26"],
    "圣诞节": ["2024-12-25", "2025-12-25", "2026-12-25", "2027-12-25"],
}
SOLAR_PUBLISHED = {
    "立春": ["2024-02-04", "2025-02-03", "2026-02-04", "2027-02-04"],
    "夏至": ["2024-06-21", "2025-06-21", "2026-06-21", "2027-06-21"],
    "秋分": ["2024-09-22", "2025-09-23", "2026-09-23", "2027-09-23"],
    "冬至": ["2024-12-21", "2025-12-21", "2026-12-22", "2027-12-22"],
}


def _date_of(name: str, year: int, source=festivals_in) -> date:
    found = [f.date for f in source(year) if f.name_zh == name]
    assert len(found) == 1, (name, year, found)
    return found[0]


@pytest.mark.parametrize(("name", "dates"), PUBLISHED.items())
def test_festival_dates_match_published_calendars(name: str, dates: list[str]) -> None:
    for expected in dates:
        day = date.fromisoformat(expected)
        assert _date_of(name, day.year) == day
        assert name in [f.name_zh for f in festivals_on(day)]


@pytest.mark.parametrize(("name", "dates"), SOLAR_PUBLISHED.items())
def test_solar_term_dates_match_published_calendars(name: str, dates: list[str]) -> None:
    for expected in dates:
        day = date.fromisoformat(expected)
        assert _date_of(name, day.year, solar_terms) == day


def test_lunar_dates_agree_with_an_independent_implementation() -> None:
    """`holidays`' China calendar computes the lunar dates on its own: both must agree."""
    import holidays

    names = {"春节": "春节", "端午节": "端午", "中秋节": "中秋", "清明节": "清明"}
    for year in range(2015, 2036):
        official = holidays.country_holidays("CN", years=year, language="zh_CN")
        for official_name, ours in names.items():
            days = [d for d in official if official_name in official.get_list(d)]
            assert days, (official_name, year)
            assert _date_of(ours, year) == min(days), (ours, year)


@pytest.mark.parametrize("year", [1901, 1999, 2024, 2027, 2050, 2099])
def test_every_year_has_24_ordered_solar_terms(year: int) -> None:
    terms = solar_terms(year)
    assert [t.name_zh for t in terms] == [zh for _, zh, _ in SOLAR_TERMS]
    assert all(t.date.year == year and t.kind == "solar_term" for t in terms)
    assert terms[0].date.month == 1 and terms[-1].date.month == 12
    qingming = next(t for t in terms if t.name_zh == "清明")
    assert date(year, 4, 4) <= qingming.date <= date(year, 4, 6)


def test_year_catalogue_is_complete_and_sorted() -> None:
    year = festivals_in(2027)
    assert [f.date for f in year] == sorted(f.date for f in year)
    kinds = {kind: sum(f.kind == kind for f in year) for kind in ("chinese", "solar_term", "shopping",
                                                                    "western")}
    # 7 festivals + 除夕; 23 terms (清明 is listed once, as the festival); 618, 11.11, 12.12; 10 Western
    assert kinds == {"chinese": 8, "solar_term": 23, "shopping": 3, "western": 10}
    assert len({(f.key, f.date) for f in year}) == len(year)


def test_festivals_on_puts_festivals_before_holidays_and_terms() -> None:
    # 2026-04-05: 清明 and Easter on the same day
    assert [f.name_zh for f in festivals_on(date(2026, 4, 5))] == ["清明", "复活节"]
    assert festivals_on(date(2027, 2, 3)) == []
    assert [f.key for f in festivals_on(date(2027, 2, 4))] == ["lichun"]


def test_matching_by_key_name_and_alias() -> None:
    spring = festivals_on(date(2027, 2, 6))[0]
    assert isinstance(spring, Festival) and spring.kind == "chinese"
    for name in ("春节", "spring-festival", "Spring Festival", "spring festival", "Lunar New Year"):
        assert spring.matches(name)
    assert not spring.matches("中秋")
    assert spring.as_variable() == {"key": "spring-festival", "zh": "春节", "en": "Spring Festival",
                                    "kind": "chinese", "date": "2027-02-06"}
    for name in ("中秋节", "double-11", "双11", "Valentine's Day", "立春", "Start of Spring", "qingming"):
        assert is_known(name), name
    assert not is_known("Festivus")
    assert ("mid-autumn", "中秋", "Mid-Autumn Festival", "chinese") in catalogue()


def test_years_outside_the_checked_range_are_refused() -> None:
    with pytest.raises(ValueError, match=r"1901-2099.*2100"):
        festivals_in(2100)
