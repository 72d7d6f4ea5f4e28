"""HTTP plumbing shared by the HTTP functions: JSON answers, the error shape, correlation ids."""

from __future__ import annotations

import json
import logging
import math
import uuid
from typing import Any

import azure.functions as func
import psycopg

from .errors import AppError, SettingError
from .settings import Settings

log = logging.getLogger(__name__)

JSON = "application/json"
# Health answers within a few seconds even when the database host does not answer at all.
HEALTH_CONNECT_TIMEOUT = 5


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body, ensure_ascii=False, default=str),
        status_code=status,
        mimetype=JSON,
        charset="utf-8",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", **(headers or {})},
    )


def error_response(
    status: int, code: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> func.HttpResponse:
    """The one error shape: ``{"error": {"code": ..., "message": ...}}``."""
    return json_response({"error": {"code": code, "message": message, **extra}}, status, headers)


def retry_after_header(seconds: float | None, default: int = 5) -> dict[str, str]:
    value = default if seconds is None or not math.isfinite(seconds) else max(1, math.ceil(seconds))
    return {"Retry-After": str(min(value, 3600))}


def unexpected(exc: BaseException, where: str) -> func.HttpResponse:
    """Log an unexpected failure with a correlation id the client also gets; never a stack trace out."""
    correlation = uuid.uuid4().hex
    log.exception("unexpected error in %s (correlation id %s)", where, correlation)
    return error_response(
        500, "InternalError", f"unexpected error; quote correlation id {correlation}", correlation_id=correlation
    )


def health(req: func.HttpRequest, settings: Settings | None = None) -> func.HttpResponse:
    """Database reachable, schema present, provider configured; 200 when all hold, else 503."""
    if settings is None:
        from .runtime import current_settings

        settings = current_settings()  # the installed runtime's (tests, benchmarks), else the environment's
    checks: dict[str, dict[str, Any]] = {}

    try:
        provider = settings.embedding_provider
        if provider == "azure-vision":
            endpoint = settings.vision_endpoint
            settings.vision_model_version  # noqa: B018 - validates the setting
            auth = "key" if settings.vision_key else "microsoft-entra"
            checks["provider"] = {"ok": True, "name": provider, "endpoint": endpoint, "auth": auth}
        elif provider == "clip":
            from .clip import ClipProvider

            clip = ClipProvider.from_settings(settings)  # checks the model files, loads nothing
            checks["provider"] = {"ok": True, "name": provider, "model": clip.model_id}
    except SettingError as exc:
        checks["provider"] = {"ok": False, "error": exc.message}

    try:
        checks["database"] = _database_check(settings)
    except SettingError as exc:
        checks["database"] = {"ok": False, "error": exc.message}
    except AppError as exc:
        checks["database"] = {"ok": False, "error": exc.message}
    except psycopg.Error as exc:  # e.g. the role may not read the catalogue: report, don't crash
        checks["database"] = {"ok": False, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}

    ok = all(c["ok"] for c in checks.values())
    return json_response({"status": "ok" if ok else "unhealthy", "checks": checks}, 200 if ok else 503)


def _database_check(settings: Settings) -> dict[str, Any]:
    from .db import connect
    from .schema import check_schema

    with connect(settings, connect_timeout=HEALTH_CONNECT_TIMEOUT) as conn:
        vector = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        status = check_schema(conn)
        active = None
        if status.version >= 1:
            row = conn.execute("SELECT model_id FROM embedding_models WHERE state = 'active'").fetchone()
            active = row[0] if row else None
    result: dict[str, Any] = {
        "ok": vector is not None and status.ok and active is not None,
        "pgvector": vector[0] if vector else None,
        "schema": status.version >= 1,
        "schema_version": status.version,
        "schema_version_required": status.latest,
        "active_model": active,
    }
    problem = status.problem()
    if problem is None and active is None:
        problem = "no active embedding model: run `python -m shared.cli migrate` (it prepares the configured model)"
    if problem is not None:
        result["error"] = problem
    return result
