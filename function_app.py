"""Table of contents of the Function App: each trigger parses its binding and hands over to shared/."""

from __future__ import annotations

import azure.functions as func

from shared import http

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    return http.health(req)
