"""The search page: one self-contained HTML file (no CDN, works offline), served with a strict CSP."""

from __future__ import annotations

import secrets
from functools import cache
from importlib import resources
from urllib.parse import urlparse

import azure.functions as func

from .errors import SettingError
from .settings import Settings


@cache
def _template() -> str:
    return resources.files("shared").joinpath("ui/index.html").read_text(encoding="utf-8")


def storage_origin(settings: Settings) -> str | None:
    """Where read links point (scheme://host[:port]), for the page's img-src; None when not configured."""
    from .blobs import make_service_client

    try:
        url = urlparse(make_service_client(settings.images_storage).url)
    except (SettingError, ValueError):  # the page still works; only the images cannot load
        return None
    return f"{url.scheme}://{url.netloc}"


def page(req: func.HttpRequest, settings: Settings | None = None) -> func.HttpResponse:
    """The page, with a fresh nonce for its inline script and style."""
    if settings is None:
        from .runtime import current_settings

        settings = current_settings()
    nonce = secrets.token_urlsafe(18)
    images = " ".join(filter(None, ["'self'", "blob:", "data:", storage_origin(settings)]))
    csp = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src {images}; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    )
    return func.HttpResponse(
        _template().replace("{{nonce}}", nonce),
        status_code=200,
        mimetype="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": csp,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )
