"""GET /api/health: anonymous; database reachable, schema present, provider configured."""

from __future__ import annotations

import json

import azure.functions as func
import psycopg

from shared.http import health
from shared.runtime import Runtime
from shared.settings import Settings
from tests.appfns import handler

REQ = func.HttpRequest("GET", "http://localhost/api/health", body=b"", headers={})


def answer(settings: Settings | None = None) -> tuple[int, dict[str, object]]:
    resp = health(REQ, settings) if settings is not None else handler("health")(REQ)
    return resp.status_code, json.loads(resp.get_body())


def test_healthy_worker(runtime: Runtime) -> None:
    status, body = answer()  # the registered function, reading the installed runtime's settings
    assert status == 200 and body["status"] == "ok"
    checks = body["checks"]
    assert checks["database"]["schema"] is True and checks["database"]["pgvector"] >= "0.7"  # type: ignore[index]
    assert checks["database"]["active_model"] == "azure-vision:2023-04-15"  # type: ignore[index]
    assert checks["provider"] == {
        "ok": True,
        "name": "azure-vision",
        "endpoint": runtime.settings.vision_endpoint,
        "auth": "key",
    }


def test_missing_settings_are_named_and_answer_503() -> None:
    status, body = answer(Settings({}))
    assert status == 503 and body["status"] == "unhealthy"
    assert "VISION_ENDPOINT" in body["checks"]["provider"]["error"]  # type: ignore[index]
    assert "DATABASE_URL" in body["checks"]["database"]["error"]  # type: ignore[index]


def test_a_database_without_the_schema_says_how_to_create_it(empty_database: str) -> None:
    url = empty_database
    status, body = answer(Settings({"DATABASE_URL": url, "VISION_ENDPOINT": "https://x.cognitiveservices.azure.com/"}))
    assert status == 503
    db = body["checks"]["database"]  # type: ignore[index]
    assert db["schema"] is False and "python -m shared.cli migrate" in db["error"]


def test_an_unreachable_database_answers_503_without_the_password() -> None:
    url = "postgresql://app:s3cret-pw@127.0.0.1:1/db?connect_timeout=2"
    status, body = answer(Settings({"DATABASE_URL": url, "VISION_ENDPOINT": "https://x.cognitiveservices.azure.com/"}))
    assert status == 503 and "s3cret-pw" not in json.dumps(body)
    assert body["checks"]["database"]["ok"] is False  # type: ignore[index]


def test_a_database_error_in_a_check_is_reported_not_raised(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS health_nobody")
        conn.execute("CREATE ROLE health_nobody LOGIN")
        conn.execute("REVOKE ALL ON SCHEMA public FROM health_nobody")
    url = database_url.replace("postgres:@", "health_nobody@").replace("postgres@", "health_nobody@")
    status, body = answer(Settings({"DATABASE_URL": url, "VISION_ENDPOINT": "https://x.cognitiveservices.azure.com/"}))
    # The role sees the catalogue but may not read the models table: reported as a failed check, not a 500.
    assert status == 503
    assert "InsufficientPrivilege" in body["checks"]["database"]["error"]  # type: ignore[index]
