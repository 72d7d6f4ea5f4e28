"""Settings: each is reported by its name, in one line, when missing or malformed."""

from __future__ import annotations

import pytest

from shared.errors import SettingError
from shared.settings import DEFAULTS, Settings


def test_defaults_are_the_documented_ones() -> None:
    s = Settings({})
    assert s.images_container == "images"
    assert s.blob_trigger_source == "LogsAndContainerScan"
    assert s.embedding_provider == "azure-vision"
    assert (s.vision_api_version, s.vision_model_version) == ("2024-02-01", "2023-04-15")
    assert s.database_auth == "password"
    assert (s.hnsw_m, s.hnsw_ef_construction, s.hnsw_ef_search, s.read_link_minutes) == (32, 128, None, 15)


@pytest.mark.parametrize(
    ("values", "attribute", "name", "words"),
    [
        ({}, "database_url", "DATABASE_URL", "is not set"),
        ({"DATABASE_URL": "host=db port=5432 'unterminated"}, "database_url", "DATABASE_URL", "not a valid"),
        ({}, "vision_endpoint", "VISION_ENDPOINT", "is not set"),
        ({"VISION_ENDPOINT": "ftp://x"}, "vision_endpoint", "VISION_ENDPOINT", "https://"),
        ({"VISION_ENDPOINT": "http://example.com/"}, "vision_endpoint", "VISION_ENDPOINT", "https://"),
        ({"VISION_MODEL_VERSION": "latest"}, "vision_model_version", "VISION_MODEL_VERSION", "pin a model version"),
        ({"DATABASE_AUTH": "kerberos"}, "database_auth", "DATABASE_AUTH", "password, entra"),
        ({"BLOB_TRIGGER_SOURCE": "Polling"}, "blob_trigger_source", "BLOB_TRIGGER_SOURCE", "EventGrid"),
        ({"EMBEDDING_PROVIDER": "openai"}, "embedding_provider", "EMBEDDING_PROVIDER", "azure-vision"),
        ({"IMAGES_CONTAINER": "My_Images"}, "images_container", "IMAGES_CONTAINER", "lowercase"),
        ({"HNSW_EF_SEARCH": "fast"}, "hnsw_ef_search", "HNSW_EF_SEARCH", "auto or a whole number"),
        ({"HNSW_EF_SEARCH": "0"}, "hnsw_ef_search", "HNSW_EF_SEARCH", "from 1 to 1000"),
        ({"HNSW_M": "1"}, "hnsw_m", "HNSW_M", "from 2 to 100"),
        ({"READ_LINK_MINUTES": "0"}, "read_link_minutes", "READ_LINK_MINUTES", "from 1 to 1440"),
        ({}, "images_storage", "ImagesStorage", "is not set"),
        ({"ImagesStorage": "not-a-connection-string"}, "images_storage", "ImagesStorage", "connection string"),
        (
            {"IMAGES_CONTAINER": "pics", "THUMBNAILS_CONTAINER": "pics"},
            "thumbnails_container",
            "THUMBNAILS_CONTAINER",
            "must differ",
        ),
    ],
)
def test_a_bad_setting_is_named_in_one_line(values: dict[str, str], attribute: str, name: str, words: str) -> None:
    with pytest.raises(SettingError) as caught:
        getattr(Settings(values), attribute)
    message = str(caught.value)
    assert caught.value.name == name and name in message and words in message
    assert "\n" not in message


def test_a_bad_setting_does_not_stop_unrelated_ones() -> None:
    s = Settings({"DATABASE_URL": "postgresql://u@h/db", "HNSW_M": "huge"})
    assert s.database_url == "postgresql://u@h/db"  # read fine although HNSW_M is malformed
    with pytest.raises(SettingError, match="HNSW_M"):
        _ = s.hnsw_m


def test_identity_based_storage_connection() -> None:
    conn = Settings({"ImagesStorage__accountName": "acct"}).images_storage
    assert conn.uses_identity and conn.blob_service_uri == "https://acct.blob.core.windows.net"
    conn = Settings({"ImagesStorage__blobServiceUri": "https://acct.blob.core.windows.net/"}).images_storage
    assert conn.blob_service_uri == "https://acct.blob.core.windows.net"


def test_blank_values_fall_back_to_defaults_and_values_are_trimmed() -> None:
    s = Settings({"IMAGES_CONTAINER": "  ", "VISION_ENDPOINT": " https://x.cognitiveservices.azure.com "})
    assert s.images_container == "images"
    assert s.vision_endpoint == "https://x.cognitiveservices.azure.com/"


def test_every_setting_is_in_the_local_settings_example() -> None:
    import json
    from pathlib import Path

    values = json.loads((Path(__file__).parent.parent / "local.settings.json.example").read_text())["Values"]
    missing = [n for n in DEFAULTS if n not in values]
    assert missing == []


def test_the_index_a_store_builds_by_default_is_the_one_the_default_settings_ask_for() -> None:
    from shared.runtime import index_spec
    from shared.schema import IndexSpec

    assert IndexSpec() == index_spec(Settings({}))
