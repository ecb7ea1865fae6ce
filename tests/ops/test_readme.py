"""The README and docs/ stand alone, and the README's settings table says what app/settings.py does."""

import re

import pytest

from app.settings import Settings
from tests.conftest import ROOT

SETTINGS_SOURCE = (ROOT / "app" / "settings.py").read_text()
README = (ROOT / "README.md").read_text()


def settings_table() -> dict[str, str]:
    """Variable -> default, from the README's settings table (a row may hold `A` / `B` with x / y)."""
    section = README.split("## Settings", 1)[1].split("\n## ", 1)[0]
    table = {}
    for row in re.finditer(r"^\| (?P<names>[^|]+) \| (?P<defaults>[^|]+) \|", section, re.M):
        names = re.findall(r"`([A-Z][A-Z0-9_]+)`", row["names"])
        defaults = [d.strip() for d in row["defaults"].split(" / ")]
        for i, name in enumerate(names):
            table[name] = defaults[i] if len(defaults) == len(names) else row["defaults"].strip()
    return table


@pytest.mark.parametrize("doc", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_docs_point_at_nothing_outside_the_repository(doc):
    assert not re.search(r"\.\./shared|/work/", doc.read_text()), doc


def test_every_setting_has_a_row_in_the_readme():
    read = set(re.findall(r'\(\s*"([A-Z][A-Z0-9_]+)"', SETTINGS_SOURCE))
    assert {"REDIS_URL", "HEALTH_CHECK_INTERVAL", "WARMPOOL_LOG_FORMAT"} <= read  # the pattern finds them
    assert read - set(settings_table()) == set()


def test_the_readmes_defaults_are_the_settings_defaults():
    table, defaults = settings_table(), Settings()
    typed = re.findall(r'_(float|int|bool)\("([A-Z][A-Z0-9_]+)", cls\.(\w+)[,)]', SETTINGS_SOURCE)
    assert len(typed) > 10
    for kind, name, field in typed:
        expected = getattr(defaults, field)
        shown = table[name].lower() == "true" if kind == "bool" else float(table[name])
        assert shown == expected, f"README says {name} defaults to {table[name]}; app/settings.py says {expected}"
