"""Shared table fixtures (tests/table_fixtures.py)."""

from table_fixtures import *  # noqa: F401,F403  (fixtures are registered by name)
