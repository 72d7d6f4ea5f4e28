"""Table of contents of the Function App: each trigger parses its binding and hands over to shared/."""

from __future__ import annotations

import os

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob

from shared import api, http, ingest, ui

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

# --- ingestion -------------------------------------------------------------------------------------


# Bound to a BlobClient (SDK-type binding): the host passes which blob changed, not its bytes, so an
# oversized file is refused from its properties before anything is downloaded.
@app.blob_trigger(
    arg_name="client",
    path="%IMAGES_CONTAINER%/{name}",
    connection="ImagesStorage",
    source=os.environ.get("BLOB_TRIGGER_SOURCE", "LogsAndContainerScan"),
)
def index_image(client: blob.BlobClient) -> None:
    ingest.handle_blob_trigger(client)


@app.event_grid_trigger(arg_name="event")
def remove_deleted_image(event: func.EventGridEvent) -> None:
    ingest.handle_blob_event(event)


@app.timer_trigger(
    arg_name="timer", schedule=os.environ.get("RECONCILE_SCHEDULE") or "0 0 * * * *", run_on_startup=False
)
def reconcile_timer(timer: func.TimerRequest) -> None:
    ingest.handle_reconcile_timer(timer)


# --- search ----------------------------------------------------------------------------------------


@app.route(route="search", methods=["GET", "POST"])
def search(req: func.HttpRequest) -> func.HttpResponse:
    return api.search(req)


@app.route(route="images/{id}/similar", methods=["GET"])
def similar(req: func.HttpRequest) -> func.HttpResponse:
    return api.similar(req)


@app.route(route="images/{id}", methods=["GET"])
def image(req: func.HttpRequest) -> func.HttpResponse:
    return api.image(req)


@app.route(route="openapi.json", methods=["GET"])
def openapi(req: func.HttpRequest) -> func.HttpResponse:
    return api.openapi(req)


@app.route(route="ui", methods=["GET"])
def search_page(req: func.HttpRequest) -> func.HttpResponse:
    return ui.page(req)


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    return http.health(req)
