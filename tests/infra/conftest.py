"""Fixtures for the deployment tests: the machine's PostgreSQL and throw-away databases in it."""

from __future__ import annotations

import uuid

import pytest

from infra import deploy


@pytest.fixture(scope="session")
def postgres() -> deploy.Postgres:
    """The PostgreSQL of the project's machines (PGHOST/PGPORT/..., default 127.0.0.1:5432, user postgres).

    Started with Debian's pg_ctlcluster when its port is closed; skipped only where neither a server answers nor
    a local Debian cluster exists to start.
    """
    pg = deploy.Postgres.from_env()
    if not pg.is_up() and not any(c[2] == pg.port for c in deploy.debian_clusters()):
        pytest.skip(f"no PostgreSQL on {pg.host}:{pg.port} and no Debian cluster to start")
    deploy.ensure_postgres(pg)
    return pg


@pytest.fixture(scope="module")
def pg_databases(postgres):
    """Factory: ``pg_databases("dagster")`` creates a fresh uniquely named database; all are dropped afterwards."""
    created: list[str] = []

    def make(purpose: str) -> str:
        name = f"svdpipe_test_{purpose}_{uuid.uuid4().hex[:10]}"
        postgres.create_database(name)
        created.append(name)
        return name

    yield make
    for name in created:
        postgres.drop_database(name)
