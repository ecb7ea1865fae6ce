"""API-tier fixtures: the app's test client on the unit fakes (tests/unit/fakes.py)."""

from tests.unit.fakes import env  # noqa: F401  (fixture)
