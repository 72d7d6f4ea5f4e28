"""Connections: Entra tokens as passwords, the CLI's init-db, and transient errors."""

from __future__ import annotations

import time
from types import SimpleNamespace

import psycopg
import pytest

from shared.cli import main as cli_main
from shared.db import connect, make_pool
from shared.errors import DatabaseUnavailable, SettingError
from shared.settings import Settings


class FakeCredential:
    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: object) -> SimpleNamespace:
        self.scopes.append(scopes)
        return SimpleNamespace(token=f"token-{len(self.scopes)}", expires_on=int(time.time()) + 3600)


def test_entra_auth_sends_a_token_for_the_postgres_scope(database_url: str) -> None:
    credential = FakeCredential()
    settings = Settings({"DATABASE_URL": database_url.replace("postgres:@", "postgres@"), "DATABASE_AUTH": "entra"})
    with connect(settings, credential) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.info.password == "token-1"
    pool = make_pool(settings, credential, min_size=3)
    try:
        pool.wait(timeout=10)
        with pool.connection() as a, pool.connection() as b, pool.connection() as c:
            # One token for the pool, cached until shortly before it expires, not one per connection.
            assert {a.info.password, b.info.password, c.info.password} == {"token-2"}
    finally:
        pool.close()
    assert credential.scopes == [("https://ossrdbms-aad.database.windows.net/.default",)] * 2


def test_entra_auth_needs_a_user_name_in_the_url() -> None:
    settings = Settings(
        {"DATABASE_URL": "postgresql://myserver.postgres.database.azure.com/db", "DATABASE_AUTH": "entra"}
    )
    with pytest.raises(SettingError, match="DATABASE_URL has no user name"):
        connect(settings, FakeCredential())


def test_an_unreachable_database_is_a_transient_error() -> None:
    settings = Settings({"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none?connect_timeout=2"})
    with pytest.raises(DatabaseUnavailable, match="cannot connect"):
        connect(settings)


def test_cli_init_db_is_safe_to_run_twice(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("VISION_ENDPOINT", "https://example.cognitiveservices.azure.com/")  # no call is made
    assert cli_main(["init-db"]) == 0
    assert cli_main(["migrate"]) == 0  # init-db is its alias; the second run changes nothing
    out = capsys.readouterr().out
    assert out.count("schema is current (version") == 2
    assert out.count("model azure-vision:2023-04-15 is registered") == 2
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'vector'").fetchone() == (1,)


def test_cli_names_a_missing_setting_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert cli_main(["init-db"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: setting DATABASE_URL is not set") and err.count("\n") == 1


def test_cli_stats_on_a_new_database_says_to_migrate(
    empty_database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    url = empty_database
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    monkeypatch.setenv("DATABASE_URL", url)
    assert cli_main(["stats"]) == 2
    err = capsys.readouterr().err
    assert err == "error: the database has no schema: run `python -m shared.cli migrate`\n"
