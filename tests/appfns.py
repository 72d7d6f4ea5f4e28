"""The registered functions of function_app, built once per test session (a second build raises)."""

from __future__ import annotations

import json
import threading
from functools import cache
from pathlib import Path
from typing import Any

_lock = threading.Lock()

# How many times the host delivers a blob whose invocation fails before it goes to the poison queue.
POISON_BLOB_THRESHOLD: int = json.loads((Path(__file__).parents[1] / "host.json").read_text())["extensions"]["blobs"][
    "poisonBlobThreshold"
]


@cache
def _build() -> dict[str, Any]:
    from function_app import app

    return {f.get_function_name(): f for f in app.get_functions()}


def registered() -> dict[str, Any]:
    with _lock:  # threads of one test may ask first at the same time; the app builds its table once
        return _build()


def handler(name: str) -> Any:
    """The user function behind a registered function, called as the host would call it."""
    return registered()[name].get_user_function()


def bindings(name: str) -> list[dict[str, Any]]:

    return [json.loads(b) if isinstance(b, str) else b for b in registered()[name].get_raw_bindings()]


def blob_trigger_client(connection_string: str, container: str, name: str) -> Any:
    """The ``BlobClient`` the Python worker hands ``index_image``: built by the SDK-type binding's own
    converter from the model binding data the host sends (the connection setting's name, the container
    and the blob), with the ``ImagesStorage`` setting in the environment as on a real worker."""
    import os
    from types import SimpleNamespace

    from azurefunctions.extensions.base import Datum
    from azurefunctions.extensions.bindings.blob import BlobClient
    from azurefunctions.extensions.bindings.blob.blobClientConverter import BlobClientConverter

    content = json.dumps({"Connection": "ImagesStorage", "ContainerName": container, "BlobName": name})
    data = SimpleNamespace(version="1.0", source="AzureStorageBlobs", content_type="application/json", content=content)
    setting = "ImagesStorage"  # the binding's connection setting, as function_app.py names it
    before = os.environ.get(setting)
    os.environ[setting] = connection_string
    try:
        return BlobClientConverter.decode(Datum(data, "model_binding_data"), trigger_metadata={}, pytype=BlobClient)
    finally:
        if before is None:
            del os.environ[setting]
        else:
            os.environ[setting] = before
