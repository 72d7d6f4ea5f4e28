"""AzureVisionProvider against the fake Azure AI Vision server, over real HTTP.

Waits between retries go through an injected ``sleep`` that records them and advances a virtual
clock instead of sleeping, so the retry budget is checked without waiting for it.
"""

from __future__ import annotations

import email.utils
import hashlib
import io
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import requests
from azure.core.credentials import AccessToken
from PIL import Image

from shared.auth import COGNITIVE_SERVICES_SCOPE
from shared.embeddings import EmbeddingProvider, make_provider
from shared.errors import (
    InvalidImage,
    InvalidInput,
    PermanentError,
    ProviderMisconfigured,
    ProviderRejected,
    ProviderResponseError,
    ProviderUnavailable,
    SettingError,
    TransientError,
)
from shared.settings import Settings
from shared.vision import AzureVisionProvider
from tests.fake_vision import FakeVision

API = "2024-02-01"
MODEL = "2023-04-15"


def image_bytes(
    colour: str | tuple[int, int, int] = "red", size: tuple[int, int] = (64, 64), fmt: str = "PNG"
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    return buf.getvalue()


class VirtualTime:
    """A monotonic clock that real time and injected sleeps both advance; sleeps are recorded."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return time.monotonic() + self.offset

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.offset += seconds


class MaxJitter(random.Random):
    """Full jitter that always picks the top of the window, so backoff is predictable."""

    def uniform(self, a: float, b: float) -> float:
        return b


class NoJitter(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


class FakeCredential:
    def __init__(self, token: str = "fake-entra-token") -> None:  # noqa: S107 - the fake's token
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeVision]:
    with FakeVision() as server:
        yield server


@pytest.fixture
def fake(fake_server: FakeVision) -> Iterator[FakeVision]:
    fake_server.reset()
    yield fake_server
    fake_server.reset()


@pytest.fixture
def vt() -> VirtualTime:
    return VirtualTime()


@pytest.fixture
def make(fake: FakeVision, vt: VirtualTime) -> Iterator[Callable[..., AzureVisionProvider]]:
    made: list[AzureVisionProvider] = []

    def _make(**overrides: Any) -> AzureVisionProvider:
        args: dict[str, Any] = {
            "key": fake.key,
            "timeout": 2.0,
            "max_retry_seconds": 60.0,
            "sleep": vt.sleep,
            "clock": vt.clock,
        }
        args.update(overrides)
        provider = AzureVisionProvider(fake.endpoint, **args)
        made.append(provider)
        return provider

    yield _make
    for provider in made:
        provider.close()


def settings_for(fake: FakeVision, **values: str) -> Settings:
    return Settings({"VISION_ENDPOINT": fake.endpoint, **values})


# --- the request on the wire ---------------------------------------------------------------------
def test_image_request_shape_and_answer(fake: FakeVision, make: Callable[..., AzureVisionProvider]) -> None:
    data = image_bytes("red")
    vector = make().embed_image(data)

    [call] = fake.requests
    assert call["method"] == "POST"
    assert call["path"] == "/computervision/retrieval:vectorizeImage"
    assert call["query"] == {"api-version": API, "model-version": MODEL}
    assert call["headers"]["content-type"] == "application/octet-stream"
    assert call["headers"]["ocp-apim-subscription-key"] == fake.key
    assert "authorization" not in call["headers"]
    assert call["body_length"] == len(data)
    assert call["sha256"] == hashlib.sha256(data).hexdigest()
    assert call["status"] == 200
    assert vector.dtype == np.float32 and vector.shape == (1024,)
    assert np.array_equal(vector, fake.vector_for_image(data))


def test_text_request_shape_and_answer(fake: FakeVision, make: Callable[..., AzureVisionProvider]) -> None:
    vector = make().embed_text("a blue house by the sea")

    [call] = fake.requests
    assert call["path"] == "/computervision/retrieval:vectorizeText"
    assert call["query"] == {"api-version": API, "model-version": MODEL}
    assert call["headers"]["content-type"] == "application/json"
    assert call["json"] == {"text": "a blue house by the sea"}
    assert np.array_equal(vector, fake.vector_for_text("a blue house by the sea"))


def test_model_id_dimension_and_protocol(make: Callable[..., AzureVisionProvider]) -> None:
    provider = make(model_version="2022-04-11")
    assert provider.model_id == "azure-vision:2022-04-11"
    assert provider.dimension == 1024
    assert isinstance(provider, EmbeddingProvider)


def test_pinned_model_version_is_sent_and_checked(fake: FakeVision, make: Callable[..., AzureVisionProvider]) -> None:
    data = image_bytes("green")
    old = make(model_version="2022-04-11").embed_image(data)
    assert fake.requests[-1]["query"]["model-version"] == "2022-04-11"
    assert np.array_equal(old, fake.vector_for_image(data, "2022-04-11"))
    assert not np.allclose(old, make().embed_image(data))


def test_connections_are_pooled(fake: FakeVision, make: Callable[..., AzureVisionProvider]) -> None:
    provider = make()
    provider.embed_text("one")
    provider.embed_text("two")
    ports = {c["client_port"] for c in fake.requests}
    assert len(ports) == 1
    adapter = provider._session.get_adapter(fake.endpoint)
    assert adapter.max_retries.total == 0  # type: ignore[attr-defined]
    assert adapter._pool_maxsize == 16  # type: ignore[attr-defined]


def test_concurrent_calls_from_threads(fake: FakeVision, make: Callable[..., AzureVisionProvider]) -> None:
    provider = make()
    words = ["red", "green", "blue", "yellow"] * 8
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = provider.embed_text(f"a {words[i]} thing {i}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(words))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake.requests) == len(words)
    for i, vector in results.items():
        assert np.array_equal(vector, fake.vector_for_text(f"a {words[i]} thing {i}"))


# --- auth ---------------------------------------------------------------------------------------
def test_from_settings_with_key(fake: FakeVision) -> None:
    settings = settings_for(fake, VISION_KEY=fake.key or "", VISION_TIMEOUT_SECONDS="7", VISION_MAX_RETRY_SECONDS="9")
    with AzureVisionProvider.from_settings(settings) as provider:
        assert provider.max_retry_seconds == 9
        assert provider._read_timeout == 7
        provider.embed_text("red")
    assert fake.requests[0]["headers"]["ocp-apim-subscription-key"] == fake.key
    with AzureVisionProvider.from_settings(settings, max_retry_seconds=2) as provider:
        assert provider.max_retry_seconds == 2


def test_bearer_token_from_credential(fake: FakeVision) -> None:
    credential = FakeCredential("fake-entra-token")
    provider = make_provider(settings_for(fake), credential=credential)
    assert isinstance(provider, AzureVisionProvider)
    try:
        provider.embed_text("red roses")
        provider.embed_image(image_bytes("red"))
    finally:
        provider.close()
    for call in fake.requests:
        assert call["headers"]["authorization"] == "Bearer fake-entra-token"
        assert "ocp-apim-subscription-key" not in call["headers"]
        assert call["status"] == 200
    assert credential.scopes == [(COGNITIVE_SERVICES_SCOPE,)]  # cached: one token for both calls


def test_without_key_or_credential_uses_default_azure_credential_lazily(
    fake: FakeVision, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[FakeCredential] = []

    def fake_default() -> FakeCredential:
        created.append(FakeCredential())
        return created[-1]

    monkeypatch.setattr("azure.identity.DefaultAzureCredential", fake_default)
    with AzureVisionProvider.from_settings(settings_for(fake)) as provider:
        assert created == []  # nothing until a token is needed
        provider.embed_text("blue")
    assert len(created) == 1
    assert fake.requests[0]["headers"]["authorization"] == "Bearer fake-entra-token"


def test_credential_failure_is_an_actionable_setting_error(fake: FakeVision) -> None:
    from azure.identity import CredentialUnavailableError

    class NoIdentity:
        def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
            raise CredentialUnavailableError("no managed identity endpoint found")

    provider = AzureVisionProvider.from_settings(settings_for(fake), credential=NoIdentity())
    with provider, pytest.raises(SettingError, match=r"VISION_KEY.*no managed identity endpoint found"):
        provider.embed_text("red")
    assert fake.requests == []


def test_exactly_one_of_key_or_token_provider() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        AzureVisionProvider("http://127.0.0.1:1/")
    with pytest.raises(ValueError, match="exactly one"):
        AzureVisionProvider("http://127.0.0.1:1/", key="k", token_provider=lambda: "t")


def test_wrong_key_is_misconfigured_and_not_retried(
    fake: FakeVision, make: Callable[..., AzureVisionProvider], vt: VirtualTime
) -> None:
    secret = "wrong-secret-key-123"
    with pytest.raises(ProviderMisconfigured) as info:
        make(key=secret).embed_image(image_bytes())
    message = str(info.value)
    assert len(fake.requests) == 1 and vt.sleeps == []
    assert "401" in message and "VISION_ENDPOINT" in message and "VISION_KEY" in message
    assert secret not in message and secret not in repr(info.value.__cause__)
    assert isinstance(info.value, PermanentError)


def test_wrong_token_is_misconfigured_and_names_the_role_and_subdomain(
    fake: FakeVision, make: Callable[..., AzureVisionProvider]
) -> None:
    with pytest.raises(ProviderMisconfigured) as info:
        make(key=None, token_provider=lambda: "expired-token-xyz").embed_text("red")
    message = str(info.value)
    assert "Cognitive Services User" in message and "custom-subdomain" in message
    assert "Microsoft Entra token" in message
    assert "expired-token-xyz" not in message
    assert len(fake.requests) == 1


@pytest.mark.parametrize("status", [403, 404])
def test_403_and_404_are_misconfigured(
    status: int, fake: FakeVision, make: Callable[..., AzureVisionProvider], vt: VirtualTime
) -> None:
    fake.fail_next(status, times=3)
    with pytest.raises(ProviderMisconfigured, match=str(status)):
        make().embed_text("red")
    assert len(fake.requests) == 1 and vt.sleeps == []


def test_unsupported_api_version_is_misconfigured_not_a_bad_input(
    fake: FakeVision, make: Callable[..., AzureVisionProvider]
) -> None:
    with pytest.raises(ProviderMisconfigured, match="VISION_API_VERSION"):
        make(api_version="2099-01-01").embed_image(image_bytes())
    with pytest.raises(ProviderMisconfigured, match="VISION_MODEL_VERSION"):
        make(model_version="2099-01-01").embed_text("red")
    assert len(fake.requests) == 2


def test_redirect_is_misconfigured(fake: FakeVision, make: Callable[..., AzureVisionProvider]) -> None:
    fake.respond_next(301, headers={"Location": "https://elsewhere.example/"})
    with pytest.raises(ProviderMisconfigured, match=re.escape("redirected to https://elsewhere.example/")):
        make().embed_text("red")
    assert len(fake.requests) == 1


# --- retries ------------------------------------------------------------------------------------
def test_429_waits_at_least_retry_after(
    fake: FakeVision, make: Callable[..., AzureVisionProvider], vt: VirtualTime
) -> None:
    fake.fail_next(429, retry_after="2", times=3)
    data = image_bytes("blue")
    vector = make().embed_image(data)
    assert np.array_equal(vector, fake.vector_for_image(data))
    assert [c["status"] for c in fake.requests] == [429, 429, 429, 200]
    assert len(vt.sleeps) == 3 and all(s >= 2 for s in vt.sleeps)


def test_retry_after_as_http_date(fake: FakeVision, make: Callable[..., AzureVisionProvider], vt: VirtualTime) -> None:
    fake.fail_next(429, retry_after=email.utils.formatdate(time.time() + 4, usegmt=True))
    make(rng=NoJitter()).embed_text("red")
    [slept] = vt.sleeps
    assert 2.5 <= slept <= 4.5  # the date has whole-second precision


def test_retry_after_ms_headers_take_precedence(
    fake: FakeVision, make: Callable[..., AzureVisionProvider], vt: VirtualTime
) -> None:
    fake.fail_next(429, retry_after="30", headers={"retry-after-ms": "1500"})
    fake.fail_next(503, headers={"x-ms-retry-after-ms": "2500"})
    make(rng=NoJitter()).embed_text("red")
    assert vt.sleeps == [1.5, 2.5]


def test_429_without_retry_after_backs_off_exponentially(
    fake: FakeVision, make: Callable[..., AzureVisionProvider], vt: VirtualTime
) -> None:
    fake.fail_next(429, times=4)
    make(rng=MaxJitter()).embed_text("red")
    assert vt.sleeps == [0.5, 1.0, 2.0, 4.0]
    assert len(fake.requests) == 5


def test_backoff_is_full_jitter_capped_at_20_seconds(
    fake: FakeVision, make: Callable[..., AzureVisionProvider], vt: VirtualTime
) -> None:
    fake.fail_next(503, times=8)
    make(rng=random.Random(7), max_retry_seconds=1000).embed_text("red")
    windows = [min(20.0, 0.5 * 2**i) for i in range(8)]
    assert len(vt.sleeps) == 8
    assert all(0 <= s <= w for s, w in zip(vt.sleeps, windows, strict=True))
    assert len(set(vt.sleeps)) == 8  # jittered, not fixed


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_server_errors_are_retried(
    status: int, fake: FakeVision, make: Callable[..., AzureVisionProvider], vt: VirtualTime
) -> None:
    fake.fail_next(status, times=2)
    make().embed_text("red")
    assert [c["status"] for c in fake.requests] == [status, status, 200]
    assert len(vt.sleeps) == 2


def test_connection_reset_is_retried(fake: FakeVision, make: Callable[..., AzureVisionProvider]) -> None:
    fake.close_connection_next()
    data = image_bytes("yellow")
    assert np.array_equal(make().embed_image(data), fake.vector_for_image(data))
    assert len(fake.requests) == 2 and fake.requests[1]["status"] == 200


def test_slow_answer_times_out_and_is_retried(fake: FakeVision, make: Callable[..., AzureVisionProvider]) -> None:
    fake.delay_next(1.0)
    started = time.monotonic()
    make(timeout=0.2).embed_text("red")
    assert time.monotonic() - started < 0.9  # did not wait for the slow answer
    assert len(fake.requests) == 2


def test_service_down_is_retried_then_unavailable(make: Callable[..., AzureVisionProvider], vt: VirtualTime) -> None:
    with FakeVision() as gone:
        endpoint = gone.endpoint
    provider = AzureVisionProvider(endpoint, key="k", max_attempts=3, sleep=vt.sleep, clock=vt.clock)
    with pytest.raises(ProviderUnavailable, match="ConnectionError"):
        provider.embed_text("red")
    assert len(vt.sleeps) == 2


def test_retries_are_logged_without_secrets(
    fake: FakeVision, make: Callable[..., AzureVisionProvider], caplog: pytest.LogCaptureFixture
) -> None:
    fake.fail_next(429, retry_after="3")
    with caplog.at_level(logging.WARNING, logger="shared.vision"):
        make().embed_text("red")
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "429" in record.getMessage() and "in 3.00 s" in record.getMessage()
    assert fake.key and fake.key not in record.getMessage()


# --- giving up ----------------------------------------------------------------------------------
def test_no_retry_on_400_and_the_service_code_is_kept(
    fake: FakeVision, make: Callable[..., AzureVisionProvider], vt: VirtualTime
) -> None:
    with pytest.raises(ProviderRejected) as info:
        make().embed_image(b"this is not an image")
    assert len(fake.requests) == 1 and vt.sleeps == []
    assert info.value.code == "InvalidImageFormat"
    assert "400 InvalidRequest/InvalidImageFormat" in str(info.value)
    assert "not a valid image" in str(info.value)


def test_other_4xx_are_rejected_without_retry(fake: FakeVision, make: Callable[..., AzureVisionProvider]) -> None:
    fake.fail_next(413, code="PayloadTooLarge", message="too big")
    with pytest.raises(ProviderRejected, match="413 PayloadTooLarge: too big"):
        make().embed_text("red")
    assert len(fake.requests) == 1


def test_attempts_run_out(fake: FakeVision, make: Callable[..., AzureVisionProvider], vt: VirtualTime) -> None:
    fake.fail_next(503, times=10)
    with pytest.raises(ProviderUnavailable) as info:
        make(max_attempts=3, rng=MaxJitter()).embed_text("red")
    message = str(info.value)
    assert len(fake.requests) == 3 and len(vt.sleeps) == 2
    assert "503" in message and "all 3 attempts failed" in message
    assert info.value.retry_after == 2.0  # the next backoff window, as a hint
    assert isinstance(info.value, TransientError)


def test_retry_after_beyond_the_budget_fails_at_once(
    fake: FakeVision, make: Callable[..., AzureVisionProvider], vt: VirtualTime
) -> None:
    fake.fail_next(429, retry_after="30", times=5)
    with pytest.raises(ProviderUnavailable) as info:
        make(max_retry_seconds=10).embed_image(image_bytes())
    assert vt.sleeps == [] and len(fake.requests) == 1
    assert info.value.retry_after == 30
    assert "429" in str(info.value) and "retry budget of 10 s" in str(info.value)


def test_budget_stops_retries_before_it_is_spent(
    fake: FakeVision, make: Callable[..., AzureVisionProvider], vt: VirtualTime
) -> None:
    fake.fail_next(429, retry_after="4", times=20)
    with pytest.raises(ProviderUnavailable):
        make(max_retry_seconds=15).embed_text("red")
    assert vt.sleeps == [4.0, 4.0, 4.0]  # a fourth wait would end past 15 s with no time for the call
    assert len(fake.requests) == 4


def test_budget_counts_time_spent_in_requests(fake: FakeVision, make: Callable[..., AzureVisionProvider]) -> None:
    fake.latency = 0.25
    fake.fail_next(503, times=50)
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable):
        make(max_retry_seconds=1.0, timeout=0.5, rng=NoJitter()).embed_text("red")
    assert time.monotonic() - started < 1.2
    assert 2 <= len(fake.requests) <= 4


def test_a_retry_never_runs_past_the_budget(fake: FakeVision, make: Callable[..., AzureVisionProvider]) -> None:
    fake.fail_next(503)
    fake.delay_next(3.0)  # the retry would answer only after 3 s
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="no answer within"):
        make(max_retry_seconds=1.5, timeout=10, rng=NoJitter()).embed_text("red")
    assert time.monotonic() - started < 2.0


def test_zero_budget_means_one_attempt(
    fake: FakeVision, make: Callable[..., AzureVisionProvider], vt: VirtualTime
) -> None:
    fake.fail_next(500)
    with pytest.raises(ProviderUnavailable):
        make(max_retry_seconds=0).embed_text("red")
    assert len(fake.requests) == 1 and vt.sleeps == []


# --- broken answers ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("script", "match"),
    [
        (lambda f: f.malformed_next("not json"), "not JSON"),
        (lambda f: f.malformed_next("[1, 2]"), "not an object"),
        (lambda f: f.wrong_vector_next(length=512), "vector of 512"),
        (lambda f: f.wrong_model_version_next("2022-04-11"), "modelVersion '2022-04-11'"),
        (lambda f: f.respond_next(200, json_body={"modelVersion": MODEL}), "vector of NoneType"),
        (
            lambda f: f.respond_next(200, json_body={"modelVersion": MODEL, "vector": ["1"] * 1024}),
            "other than numbers",
        ),
        (
            lambda f: f.respond_next(200, json_body={"modelVersion": MODEL, "vector": [True] * 1024}),
            "other than numbers",
        ),
        (
            lambda f: f.respond_next(200, body='{"modelVersion": "2023-04-15", "vector": [' + "NaN," * 1023 + "1]}"),
            "NaN",
        ),
        (lambda f: f.respond_next(200, json_body={"modelVersion": MODEL, "vector": [1e39] * 1024}), "NaN or infinite"),
    ],
)
def test_contract_violations_are_response_errors_not_retried(
    script: Callable[[FakeVision], None], match: str, fake: FakeVision, make: Callable[..., AzureVisionProvider]
) -> None:
    script(fake)
    with pytest.raises(ProviderResponseError, match=match) as info:
        make().embed_text("red")
    assert len(fake.requests) == 1
    assert isinstance(info.value, TransientError)


# --- local validation -----------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", "   \n ", " ".join(["word"] * 71)])
def test_text_outside_1_to_70_words_is_invalid_without_a_request(
    text: str, fake: FakeVision, make: Callable[..., AzureVisionProvider]
) -> None:
    with pytest.raises(InvalidInput, match="1 to 70 words"):
        make().embed_text(text)
    assert fake.requests == []


def test_70_words_and_1_word_are_accepted(fake: FakeVision, make: Callable[..., AzureVisionProvider]) -> None:
    provider = make()
    provider.embed_text(" ".join(["word"] * 70))
    provider.embed_text("word")
    assert [c["status"] for c in fake.requests] == [200, 200]


def test_empty_or_oversized_image_is_invalid_without_a_request(
    fake: FakeVision, make: Callable[..., AzureVisionProvider]
) -> None:
    provider = make()
    with pytest.raises(InvalidImage, match="empty"):
        provider.embed_image(b"")
    with pytest.raises(InvalidImage, match="20,971,520"):
        provider.embed_image(b"\0" * (20_971_520 + 1))
    assert fake.requests == []


# --- the fake's vectors make sense ------------------------------------------------------------------
def test_identical_input_gives_identical_vectors(make: Callable[..., AzureVisionProvider]) -> None:
    provider = make()
    red = image_bytes("red")
    assert np.array_equal(provider.embed_image(red), provider.embed_image(red))
    assert np.array_equal(provider.embed_text("a red car"), provider.embed_text("a red car"))
    assert not np.array_equal(provider.embed_image(red), provider.embed_image(image_bytes("red", size=(65, 64))))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_red_car_is_closer_to_a_red_image_than_to_a_blue_one(make: Callable[..., AzureVisionProvider]) -> None:
    provider = make()
    query = provider.embed_text("a red car")
    red = provider.embed_image(image_bytes((230, 20, 25), fmt="JPEG"))
    blue = provider.embed_image(image_bytes("blue"))
    assert cosine(query, red) > 0.8
    assert abs(cosine(query, blue)) < 0.2


# --- the fake's own contract ---------------------------------------------------------------------------
def post(fake: FakeVision, path: str, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("params", {"api-version": API, "model-version": MODEL})
    headers = {"Ocp-Apim-Subscription-Key": fake.key or "", **kwargs.pop("headers", {})}
    return requests.post(fake.endpoint + path, headers=headers, timeout=10, **kwargs)


IMAGE = "computervision/retrieval:vectorizeImage"
TEXT = "computervision/retrieval:vectorizeText"
OCTET = {"Content-Type": "application/octet-stream"}


def error_of(response: requests.Response) -> dict[str, Any]:
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    return dict(error)


@pytest.mark.parametrize(
    ("params", "inner"),
    [
        ({"model-version": MODEL}, "UnsupportedApiVersion"),
        ({"api-version": "2099-01-01", "model-version": MODEL}, "UnsupportedApiVersion"),
        ({"api-version": API}, "InvalidModel"),
        ({"api-version": API, "model-version": "latest"}, "InvalidModel"),
    ],
)
def test_fake_requires_both_query_parameters(params: dict[str, str], inner: str, fake: FakeVision) -> None:
    response = post(fake, TEXT, params=params, json={"text": "red"})
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "InvalidRequest" and error["innererror"]["code"] == inner


def test_fake_accepts_the_older_versions(fake: FakeVision) -> None:
    response = post(
        fake, TEXT, params={"api-version": "2023-02-01-preview", "model-version": "2022-04-11"}, json={"text": "x"}
    )
    assert response.status_code == 200 and response.json()["modelVersion"] == "2022-04-11"


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "computervision/retrieval:vectorize"), ("GET", IMAGE), ("POST", "")]
)
def test_fake_unknown_path_or_method_is_404(method: str, path: str, fake: FakeVision) -> None:
    response = requests.request(
        method, fake.endpoint + path, headers={"Ocp-Apim-Subscription-Key": fake.key or ""}, timeout=10
    )
    assert response.status_code == 404
    assert error_of(response) == {"code": "404", "message": "Resource not found"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Ocp-Apim-Subscription-Key": "wrong"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic fake-entra-token"},
    ],
)
def test_fake_needs_a_key_or_an_accepted_token(headers: dict[str, str], fake: FakeVision) -> None:
    response = requests.post(
        fake.endpoint + TEXT,
        params={"api-version": API, "model-version": MODEL},
        headers=headers,
        json={"text": "red"},
        timeout=10,
    )
    assert response.status_code == 401
    error = error_of(response)
    assert error["code"] == "401" and error["message"].startswith("Access denied due to invalid subscription key")


def test_fake_accepts_bearer_tokens_it_was_told_about(fake: FakeVision) -> None:
    params = {"api-version": API, "model-version": MODEL}
    ok = requests.post(
        fake.endpoint + TEXT,
        params=params,
        headers={"Authorization": "Bearer fake-entra-token"},
        json={"text": "a"},
        timeout=10,
    )
    assert ok.status_code == 200
    fake.accept_token("another")
    ok = requests.post(
        fake.endpoint + TEXT, params=params, headers={"Authorization": "Bearer another"}, json={"text": "a"}, timeout=10
    )
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("body", "headers", "inner"),
    [
        (b"", OCTET, "InvalidImageSize"),
        (b"\xff\xd8\xff" + b"\0" * 100, OCTET, "InvalidImageFormat"),
        (image_bytes(fmt="PPM"), OCTET, "InvalidImageFormat"),
        (image_bytes(size=(10, 64)), OCTET, "InvalidImageDimension"),
        (image_bytes(size=(64, 10)), OCTET, "InvalidImageDimension"),
        (image_bytes(), {"Content-Type": "text/plain"}, "UnsupportedMediaType"),
        (image_bytes(), {"Content-Type": "image/png"}, "UnsupportedMediaType"),
        (b'{"url": "https://example.com/a.jpg"}', {"Content-Type": "application/json"}, "InvalidImageUrl"),
    ],
)
def test_fake_rejects_bad_images(body: bytes, headers: dict[str, str], inner: str, fake: FakeVision) -> None:
    response = post(fake, IMAGE, data=body, headers=headers)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "InvalidRequest" and error["innererror"]["code"] == inner


def test_fake_rejects_images_over_20_mb(fake: FakeVision) -> None:
    response = post(fake, IMAGE, data=b"\0" * (20_971_520 + 1), headers=OCTET)
    assert response.status_code == 400 and error_of(response)["innererror"]["code"] == "InvalidImageSize"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "WEBP", "ICO", "TIFF"])
def test_fake_accepts_the_documented_formats(fmt: str, fake: FakeVision) -> None:
    response = post(
        fake, IMAGE, data=image_bytes("purple", size=(11, 11) if fmt != "ICO" else (16, 16), fmt=fmt), headers=OCTET
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["modelVersion"] == MODEL and len(body["vector"]) == 1024


@pytest.mark.parametrize(
    ("payload", "headers"),
    [
        ({}, {}),
        ({"text": ""}, {}),
        ({"text": "  "}, {}),
        ({"text": " ".join(["w"] * 71)}, {}),
        ({"text": 5}, {}),
    ],
)
def test_fake_rejects_bad_text(payload: dict[str, Any], headers: dict[str, str], fake: FakeVision) -> None:
    response = post(fake, TEXT, json=payload, headers=headers)
    assert response.status_code == 400 and error_of(response)["code"] == "InvalidRequest"


def test_fake_text_needs_json(fake: FakeVision) -> None:
    response = post(fake, TEXT, data=b'{"text": "red"}', headers={"Content-Type": "text/plain"})
    assert response.status_code == 400 and error_of(response)["innererror"]["code"] == "UnsupportedMediaType"


def test_fake_colour_semantics() -> None:
    red_text = FakeVision.vector_for_text("Crimson sunset")
    assert cosine(red_text, FakeVision.vector_for_image(image_bytes("red"))) > 0.8
    assert cosine(FakeVision.vector_for_text("grey cat"), FakeVision.vector_for_image(image_bytes("gray"))) > 0.8
    plain = FakeVision.vector_for_text("a house")
    assert np.isclose(np.linalg.norm(plain), 1.0, atol=1e-5)
    assert abs(cosine(plain, FakeVision.vector_for_image(image_bytes("red")))) < 0.2
    # Images of one colour are near each other, so "more like this" finds them.
    assert (
        cosine(
            FakeVision.vector_for_image(image_bytes("blue")),
            FakeVision.vector_for_image(image_bytes("blue", size=(80, 40))),
        )
        > 0.8
    )


def test_fake_scripts_are_consumed_in_order_and_reset(fake: FakeVision) -> None:
    fake.fail_next(429, retry_after="2", times=2)
    fake.fail_next(500)
    statuses = [post(fake, TEXT, json={"text": "red"}) for _ in range(4)]
    assert [r.status_code for r in statuses] == [429, 429, 500, 200]
    assert statuses[0].headers["Retry-After"] == "2" and "Retry-After" not in statuses[2].headers
    fake.fail_next(503, times=5)
    fake.reset()
    assert fake.requests == []
    assert post(fake, TEXT, json={"text": "red"}).status_code == 200


def test_fake_rate_limit_answers_429_with_retry_after(fake: FakeVision) -> None:
    fake.rate_limit_per_second = 2
    statuses = [post(fake, TEXT, json={"text": "red"}) for _ in range(4)]
    assert [r.status_code for r in statuses][:2] == [200, 200]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited and all(int(r.headers["Retry-After"]) >= 1 for r in limited)
    fake.rate_limit_per_second = None
    assert post(fake, TEXT, json={"text": "red"}).status_code == 200


def test_fake_latency_applies_to_every_request(fake: FakeVision) -> None:
    fake.latency = 0.15
    started = time.monotonic()
    post(fake, TEXT, json={"text": "red"})
    assert time.monotonic() - started >= 0.15


def test_fake_records_calls_by_kind(fake: FakeVision) -> None:
    post(fake, TEXT, json={"text": "red"})
    post(fake, IMAGE, data=image_bytes(), headers=OCTET)
    post(fake, "nowhere")
    assert [c["kind"] for c in fake.calls()] == ["text", "image", None]
    assert [c["path"] for c in fake.calls("image")] == ["/" + IMAGE]
    assert fake.calls("text")[0]["json"] == {"text": "red"}
    assert all(c["timestamp"] > 0 for c in fake.requests)


def test_fake_stop_cuts_open_connections() -> None:
    with FakeVision() as server:
        session = requests.Session()
        params = {"api-version": API, "model-version": MODEL}
        headers = {"Ocp-Apim-Subscription-Key": server.key or ""}
        assert session.post(server.endpoint + TEXT, params=params, headers=headers, json={"text": "a"}, timeout=5).ok
        endpoint = server.endpoint
    with pytest.raises(requests.ConnectionError):
        session.post(endpoint + TEXT, params=params, headers=headers, json={"text": "a"}, timeout=5)
    session.close()
