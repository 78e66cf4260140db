"""The widget's and the demo page's message catalogues: every language says everything
English says, with the same placeholders; every message the code asks for exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[2] / "src" / "unwall" / "broker" / "static"
CATALOGUES = STATIC / "i18n"
LANGUAGES = ("en", "zh-Hans", "zh-Hant", "fa", "ru", "es")
#: Plural categories each language's catalogue must give (CLDR, as Intl.PluralRules has them).
PLURALS = {
    "en": {"one", "other"},
    "es": {"one", "other"},
    "ru": {"one", "few", "many", "other"},
    "fa": {"one", "other"},
    "zh-Hans": {"other"},
    "zh-Hant": {"other"},
}
#: Messages that may read as in English (units and numbers only).
SAME_AS_ENGLISH = {"es": {"duration.seconds", "duration.minutes", "duration.hours"}}


def load(lang: str) -> dict[str, object]:
    result: dict[str, object] = json.loads((CATALOGUES / f"{lang}.json").read_text("utf-8"))
    return result


def placeholders(message: object) -> set[str]:
    texts = message.values() if isinstance(message, dict) else [message]
    return {name for text in texts for name in re.findall(r"\{(\w+)\}", str(text))}


def test_there_is_a_catalogue_for_each_language_and_no_other() -> None:
    assert sorted(p.stem for p in CATALOGUES.glob("*.json")) == sorted(LANGUAGES)
    source = (STATIC / "i18n.js").read_text()
    for lang in LANGUAGES:
        assert f'"{lang}": "' in source or f'  {lang}: "' in source, lang


@pytest.mark.parametrize("lang", [lang for lang in LANGUAGES if lang != "en"])
def test_nothing_is_left_untranslated(lang: str) -> None:
    english, other = load("en"), load(lang)
    assert set(other) == set(english), {
        "missing": sorted(set(english) - set(other)),
        "unknown": sorted(set(other) - set(english)),
    }
    for key, source in english.items():
        message = other[key]
        assert message, f"{lang}: {key} is empty"
        assert placeholders(message) == placeholders(source), f"{lang}: {key}'s placeholders"
        if isinstance(source, dict):
            assert isinstance(message, dict), f"{lang}: {key} needs plural forms"
            assert set(message) >= PLURALS[lang], f"{lang}: {key} lacks {PLURALS[lang]}"
            assert all(message.values()), f"{lang}: {key} has an empty plural form"
        else:
            assert isinstance(message, str), f"{lang}: {key} must be a string"
        if key not in SAME_AS_ENGLISH.get(lang, set()):
            assert message != source, f"{lang}: {key} is still in English"


def test_english_has_its_plural_forms() -> None:
    for key, message in load("en").items():
        if isinstance(message, dict):
            assert set(message) == PLURALS["en"], key


def test_every_message_the_code_asks_for_is_there() -> None:
    english = load("en")
    asked: set[str] = set()
    for name in ("logic.js", "panel.js", "frame.js", "unwall-widget.js", "page.js"):
        source = (STATIC / name).read_text()
        asked |= set(re.findall(r"\bt\(\s*\"([a-z_.0-9]+)\"", source))
        asked |= set(re.findall(r"\"((?:status|error|widget|duration)\.[a-z_]+)\"", source))
    asked |= set(re.findall(r'data-i18n="([^"]+)"', (STATIC / "index.html").read_text()))
    assert asked, "found no message keys in the code"
    assert asked - set(english) == set()
    assert {"page.title", "status.helping", "error.webrtc_blocked"} <= asked
