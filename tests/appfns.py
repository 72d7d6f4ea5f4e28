"""The registered functions of function_app, built once per test session (a second build raises)."""

from __future__ import annotations

from functools import cache
from typing import Any


@cache
def registered() -> dict[str, Any]:
    from function_app import app

    return {f.get_function_name(): f for f in app.get_functions()}


def handler(name: str) -> Any:
    """The user function behind a registered function, called as the host would call it."""
    return registered()[name].get_user_function()


def bindings(name: str) -> list[dict[str, Any]]:
    import json

    return [json.loads(b) if isinstance(b, str) else b for b in registered()[name].get_raw_bindings()]
