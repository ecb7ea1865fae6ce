"""Unit-test fixtures: see tests/unit/fakes.py."""

from tests.unit.fakes import env, store  # noqa: F401  (fixtures)
