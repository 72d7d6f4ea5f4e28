"""Security properties as tests: who may call what, what a read link allows, what never reaches a log,
and known vulnerabilities in the runtime requirements.

- Every HTTP function but the health check needs a function key (authLevel FUNCTION), read from the
  registered bindings, so a route added later without a key fails here.
- Read links (user delegation or service SAS) read one blob, nothing else, and stop working when they
  expire: checked against Azurite, which enforces SAS permissions, resource and expiry.
- A full run — ingestion, a recorded failure, service faults, searches, the health check, a database
  that cannot be reached — with a Vision key and a database password set leaves neither in any log
  record (every logger, DEBUG and up), exception or answer.
- ``pip-audit -r requirements.txt``: no known vulnerability (skipped, with the reason, only when no
  vulnerability service can be reached from the machine).
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import azure.functions as func
import psycopg
import pytest
import requests
from azure.storage.blob import BlobServiceClient, UserDelegationKey
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from shared.blobs import ImageBlobs
from shared.db import connect
from shared.errors import AppError, ProviderMisconfigured, ProviderUnavailable
from shared.runtime import Runtime, build_runtime, set_runtime
from shared.settings import Settings, get_settings
from tests.appfns import bindings, handler, registered
from tests.badfiles import Tally
from tests.conftest import prepare
from tests.fake_vision import FakeVision
from tests.imagegen import image_bytes
from tests.test_cli import FakeCredential
from tests.test_ingest import as_host_delivers, upload

ROOT = Path(__file__).resolve().parent.parent
tally = Tally("test_security")


@pytest.fixture(scope="module", autouse=True)
def _save_tally(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    tally.save(request.config)


# --- who may call what -----------------------------------------------------------------------------


def http_triggers() -> dict[str, dict[str, object]]:
    out = {}
    for name in registered():
        for binding in bindings(name):
            if binding["type"] == "httpTrigger":
                out[name] = binding
    return out


def test_every_http_function_but_health_requires_the_function_key() -> None:
    triggers = http_triggers()
    assert {"search", "similar", "image", "health"} <= set(triggers)
    levels = {name: str(b.get("authLevel")).upper() for name, b in triggers.items()}
    expected = {name: "ANONYMOUS" if name == "health" else "FUNCTION" for name in triggers}
    assert levels == expected
    tally.add("http_functions_checked", len(triggers))


def test_no_other_trigger_is_reachable_over_http() -> None:
    """Blob, Event Grid and timer functions have no HTTP route of their own."""
    for name in ("index_image", "remove_deleted_image", "reconcile_timer"):
        assert all(b["type"] != "httpTrigger" for b in bindings(name)), name


# --- read links --------------------------------------------------------------------------------------


@pytest.fixture
def two_blobs(runtime: Runtime) -> dict[str, bytes]:
    blobs = {
        "private/a.png": image_bytes("red", (32, 32), "PNG"),
        "private/b.png": image_bytes("blue", (32, 32), "PNG"),
    }
    for name, data in blobs.items():
        runtime.blobs.upload(name, data, "image/png")
    return blobs


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def on_other_resource(url: str, path: str) -> str:
    """The same SAS query string on another resource of the account."""
    parts = urlsplit(url)
    account = parts.path.split("/")[1]  # Azurite: /devstoreaccount1/<container>/<blob>
    return urlunsplit(parts._replace(path=f"/{account}/{path}"))


def test_a_read_link_reads_its_blob_and_nothing_else(runtime: Runtime, two_blobs: dict[str, bytes]) -> None:
    url, expiry = runtime.blobs.read_link("private/a.png", 15)
    # Reused within a window of 3 minutes: valid for 12 to 15 minutes from now, never longer.
    assert timedelta(minutes=12) < expiry - datetime.now(UTC) <= timedelta(minutes=15)
    sas = parse_qs(urlsplit(url).query)
    assert sas["sp"] == ["r"], "read permission only"
    got = requests.get(url, timeout=10)
    assert got.status_code == 200 and got.content == two_blobs["private/a.png"]

    container = runtime.settings.images_container
    refused = {
        "overwrite": requests.put(url, data=b"x", headers={"x-ms-blob-type": "BlockBlob"}, timeout=10),
        "delete": requests.delete(url, timeout=10),
        "set metadata": requests.put(with_query(url, comp="metadata"), headers={"x-ms-meta-a": "b"}, timeout=10),
        "another blob": requests.get(on_other_resource(url, f"{container}/private/b.png"), timeout=10),
        "list the container": requests.get(
            with_query(on_other_resource(url, container), restype="container", comp="list"), timeout=10
        ),
        "the thumbnail container": requests.get(
            on_other_resource(url, f"{runtime.settings.thumbnails_container}/private/a.png"), timeout=10
        ),
        "permissions widened": requests.delete(with_query(url, sp="rwd"), timeout=10),
        "expiry extended": requests.get(with_query(url, se="2099-01-01T00:00:00Z"), timeout=10),
    }
    tally.add("sas_misuses_refused", len(refused))
    assert {what: r.status_code for what, r in refused.items()} == {what: 403 for what in refused}
    # Nothing was changed through the link.
    assert runtime.blobs.read("private/a.png", 10**6)[0] == two_blobs["private/a.png"]


def test_read_links_expire(runtime: Runtime, two_blobs: dict[str, bytes]) -> None:
    stale, expiry = runtime.blobs.read_link("private/a.png", 15, now=datetime.now(UTC) - timedelta(minutes=16))
    assert expiry < datetime.now(UTC)
    assert requests.get(stale, timeout=10).status_code == 403
    fresh, _ = runtime.blobs.read_link("private/a.png", 1)
    assert requests.get(fresh, timeout=10).status_code == 200
    tally.add("sas_misuses_refused")


def test_a_link_reused_within_its_window_reads_the_blob_and_the_next_window_signs_a_new_one(
    runtime: Runtime, two_blobs: dict[str, bytes]
) -> None:
    blobs = runtime.blobs
    opened = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    opened -= timedelta(seconds=int(opened.timestamp()) % 60)  # a window of a 5-minute link opens each minute
    first, expiry = blobs.read_link("private/a.png", 5, now=opened + timedelta(seconds=1))
    again, same_expiry = blobs.read_link("private/a.png", 5, now=opened + timedelta(seconds=59))
    other, _ = blobs.read_link("private/b.png", 5, now=opened + timedelta(seconds=59))
    thumb, _ = blobs.read_link("private/a.png", 5, now=opened + timedelta(seconds=59), thumbnail=True)
    assert again == first and same_expiry == expiry == opened + timedelta(minutes=5)
    assert len({first, other, thumb}) == 3
    nxt, later = blobs.read_link("private/a.png", 5, now=opened + timedelta(seconds=60))
    assert nxt != first and later == expiry + timedelta(minutes=1)
    for url in (first, nxt):
        assert requests.get(url, timeout=10).content == two_blobs["private/a.png"]
    assert requests.get(other, timeout=10).content == two_blobs["private/b.png"]


class RecordingDelegation:
    """Storage's side of user delegation keys, for signing without a network: the keys it gave out."""

    def __init__(self) -> None:
        self.keys: list[tuple[datetime, datetime]] = []

    def get_user_delegation_key(self, start: datetime, expiry: datetime) -> UserDelegationKey:
        self.keys.append((start, expiry))
        key = UserDelegationKey()
        key.signed_oid, key.signed_tid = "00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"
        key.signed_start, key.signed_expiry = start.isoformat(), expiry.isoformat()
        key.signed_service, key.signed_version = "b", "2025-01-05"
        key.value = base64.b64encode(b"k" * 32).decode()
        return key


def test_a_user_delegation_key_outlives_every_link_it_signs_and_serves_many() -> None:
    """With a managed identity a link is signed with a user delegation key, fetched from Storage while a
    search waits: one key must serve the links of many answers, and last as long as each of them
    (READ_LINK_MINUTES may be a day; a key that ends first would end the link early)."""
    service = BlobServiceClient("https://account.blob.core.windows.net", credential=FakeCredential())
    delegation = RecordingDelegation()
    blobs = ImageBlobs(service, "images", "thumbnails", links_service=delegation)  # type: ignore[arg-type]
    now = datetime(2026, 1, 1, 12, 0, 10, tzinfo=UTC)
    links = [
        blobs.read_link(name, 24 * 60, now=now + timedelta(minutes=m), thumbnail=thumb)
        for m in (0, 1, 100, 300)  # 4.8-hour windows: the first three in one (09:36-14:24), the last in the next
        for name in ("a.jpg", "b/c.png")
        for thumb in (False, True)
    ]
    assert len(delegation.keys) == 1
    key_start, key_expiry = delegation.keys[0]
    assert key_start <= now and all(expiry <= key_expiry for _, expiry in links)
    assert all(parse_qs(urlsplit(url).query)["skoid"] for url, _ in links)


def test_a_thumbnail_link_reads_the_thumbnail_only(runtime: Runtime, two_blobs: dict[str, bytes]) -> None:
    assert runtime.blobs.thumbnails is not None
    runtime.blobs.thumbnails.upload_blob("private/a.png", b"preview", overwrite=True)
    url, _ = runtime.blobs.read_link("private/a.png", 5, thumbnail=True)
    assert requests.get(url, timeout=10).content == b"preview"
    original = on_other_resource(url, f"{runtime.settings.images_container}/private/a.png")
    assert requests.get(original, timeout=10).status_code == 403
    tally.add("sas_misuses_refused")


AWKWARD_NAMES = (
    "a b/c d.png",
    "ünïcödé/日本語 写真.png",
    "odd/100% #1?.png",
    "~tilde/+plus&and=eq;semi,comma@at.png",
    "quote'and\"double/(round)[square].png",
    "trailing space .png",
)


def test_read_links_to_awkward_names_are_the_blob_clients_urls_and_read_the_blob(runtime: Runtime) -> None:
    """The link's URL is written without building a BlobClient: it must be the one the SDK writes, and
    Storage must read the blob through it (its signature covers the name as Storage decodes it)."""
    blobs = runtime.blobs
    assert blobs.thumbnails is not None
    for name in AWKWARD_NAMES:
        data = name.encode()
        blobs.upload(name, data, "image/png")
        blobs.thumbnails.upload_blob(name, b"thumb:" + data, overwrite=True)
        url, _ = blobs.read_link(name, 5)
        thumb, _ = blobs.read_link(name, 5, thumbnail=True)
        assert url.split("?", 1)[0] == blobs.container.get_blob_client(name).url
        assert thumb.split("?", 1)[0] == blobs.thumbnails.get_blob_client(name).url
        assert requests.get(url, timeout=10).content == data, name
        assert requests.get(thumb, timeout=10).content == b"thumb:" + data, name


# --- secrets never reach a log -------------------------------------------------------------------------

VISION_KEY = "vk-7f3a9c1e5b2d4086FAKEVISIONKEY"
DB_PASSWORD = "pw-Q9zx7cFAKEDATABASEPASSWORD"


def with_password(url: str, password: str) -> str:
    return make_conninfo(**{**conninfo_to_dict(url), "password": password})


@pytest.fixture
def secret_runtime(
    app_settings: Settings, database_url: str, fake_vision: FakeVision, pool: ConnectionPool
) -> Iterator[Runtime]:
    """A runtime whose Vision key and database password are recognisable (the test PostgreSQL trusts
    local connections, so any password works; the fake Vision server is given the key)."""
    with pool.connection() as conn:
        conn.execute("TRUNCATE image_vectors, images, embedding_models, ingest_claims")
    fake_vision.key = VISION_KEY
    settings = app_settings.with_overrides(
        {"VISION_KEY": VISION_KEY, "DATABASE_URL": with_password(database_url, DB_PASSWORD), **FAST}
    )
    prepare(settings)
    rt = build_runtime(settings)
    rt.blobs.ensure_container()
    set_runtime(rt)
    yield rt
    set_runtime(None)
    rt.close()


FAST = {"VISION_TIMEOUT_SECONDS": "1", "VISION_MAX_RETRY_SECONDS": "1"}


def request(
    method: str,
    path: str,
    *,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> func.HttpRequest:
    return func.HttpRequest(
        method, f"http://localhost/api{path}", params=params or {}, headers=headers or {}, body=body
    )


def test_no_log_exception_or_answer_contains_the_vision_key_or_the_database_password(
    secret_runtime: Runtime,
    fake_vision: FakeVision,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt = secret_runtime
    for key in ("VISION_ENDPOINT", "VISION_KEY", "DATABASE_URL", "ImagesStorage", "IMAGES_CONTAINER"):
        monkeypatch.setenv(key, rt.settings.raw(key) or "")
    get_settings.cache_clear()
    seen: list[str] = []  # everything a client, an operator or the host could see besides the logs

    def deliver(name: str) -> None:
        try:
            handler("index_image")(as_host_delivers(rt, name))
        except AppError as exc:
            seen.append(f"{type(exc).__name__}: {exc}")

    def answer(name: str, req: func.HttpRequest) -> int:
        resp = handler(name)(req)
        seen.append(resp.get_body().decode("utf-8", "replace"))
        seen.extend(f"{k}: {v}" for k, v in resp.headers.items())
        return int(resp.status_code)

    with caplog.at_level(logging.DEBUG):  # the root logger: every library's records too
        # Ingestion: an image, a recorded failure, a refusal of our key, an outage, a broken answer.
        for i, colour in enumerate(("red", "blue", "green")):
            upload(rt, f"ok/{i}.png", image_bytes(colour, (40, 30), "PNG", seed=i), "image/png")
            deliver(f"ok/{i}.png")
        upload(rt, "bad.jpg", b"not an image at all")
        deliver("bad.jpg")
        upload(rt, "victim.jpg", image_bytes("yellow"))
        for fault in (
            lambda: fake_vision.fail_next(401, code="401"),
            lambda: fake_vision.fail_next(503, times=50),
            lambda: fake_vision.malformed_next(),
        ):
            fault()
            deliver("victim.jpg")
            fake_vision.reset()
            fake_vision.key = VISION_KEY
        assert any(s.startswith(ProviderMisconfigured.__name__) for s in seen)
        assert any(s.startswith(ProviderUnavailable.__name__) for s in seen)
        deliver("victim.jpg")

        # Searches, a throttled search, the health check.
        assert answer("search", request("GET", "/search", params={"q": "something red", "k": "3"})) == 200
        body = image_bytes("red", (32, 32), "PNG", seed=9)
        image_req = request("POST", "/search", headers={"Content-Type": "image/png"}, body=body)
        assert answer("search", image_req) == 200
        fake_vision.fail_next(429, retry_after="1", times=50)
        assert answer("search", request("GET", "/search", params={"q": "a blue sea"})) == 503
        fake_vision.reset()
        fake_vision.key = VISION_KEY
        assert answer("health", request("GET", "/health")) == 200

        # The database out of reach (wrong port, same password), and a DATABASE_URL libpq cannot parse.
        # Health reads the installed runtime's settings; without one, the environment's (as in Azure).
        set_runtime(None)
        unreachable = f"postgresql://postgres:{DB_PASSWORD}@127.0.0.1:1/imagesearch"
        malformed = f"postgresql://postgres:{DB_PASSWORD}@[::1/imagesearch"
        for url in (unreachable, malformed, with_password("host=127.0.0.1 port=1 dbname=x", DB_PASSWORD)):
            monkeypatch.setenv("DATABASE_URL", url)
            get_settings.cache_clear()
            assert answer("health", request("GET", "/health")) == 503
            try:
                connect(Settings({"DATABASE_URL": url})).close()
            except AppError as exc:
                seen.append(str(exc))

    get_settings.cache_clear()
    records = caplog.records
    assert len(records) > 50 and any(r.levelno == logging.DEBUG for r in records), "the logs were captured"
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    texts = [formatter.format(r) for r in records]  # includes tracebacks of logged exceptions
    texts += [json.dumps(getattr(r, "custom_dimensions", None), default=str) for r in records]
    tally.add("log_records_checked", len(records))
    tally.add("answers_and_errors_checked", len(seen))
    for secret in (VISION_KEY, DB_PASSWORD):
        leaks = [t for t in texts + seen if secret in t]
        assert leaks == [], f"secret found in: {leaks[:3]}"
    # The key really was in use: the fake service saw it on every call.
    assert fake_vision.key == VISION_KEY


# --- known vulnerabilities ----------------------------------------------------------------------------

# Skip reasons pip-audit gives when it could not ask its vulnerability service about a package.
UNREACHABLE = ("could not be audited", "Connection", "NameResolution", "Max retries", "timed out")


def test_runtime_requirements_have_no_known_vulnerabilities() -> None:
    """pip-audit over requirements.txt. Skipped only when no vulnerability service answers: then pip-audit
    itself reports every package as "could not be audited" and still exits 0, which must not pass."""
    tool = shutil.which("pip-audit", path=str(Path(sys.executable).parent)) or shutil.which("pip-audit")
    if tool is None:
        pytest.fail("pip-audit is not installed: it belongs in requirements-dev.txt")
    proc = subprocess.run(
        [tool, "-r", str(ROOT / "requirements.txt"), "--format", "json", "--progress-spinner", "off"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        error = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
        if any(word in proc.stderr for word in UNREACHABLE):
            pytest.skip(f"pip-audit could not reach its vulnerability service: {error}")
        pytest.fail(f"pip-audit failed: {proc.stderr[-2000:]}")
    deps = report["dependencies"]
    audited = [d for d in deps if "skip_reason" not in d]
    skipped = [d for d in deps if "skip_reason" in d]
    if not audited and skipped and all(any(w in d["skip_reason"] for w in UNREACHABLE) for d in skipped):
        pytest.skip(
            f"pip-audit could not audit any of the {len(skipped)} packages: its vulnerability service gave no "
            f"answer for them from this machine (e.g. {skipped[0]['skip_reason']})"
        )
    tally.add("packages_audited", len(audited))
    vulnerable = [(d["name"], d["version"], v["id"]) for d in audited for v in d.get("vulns", [])]
    assert vulnerable == [], f"known vulnerabilities: {vulnerable}"
    assert skipped == [], f"packages pip-audit could not audit: {[d['skip_reason'] for d in skipped]}"


def test_a_malformed_database_url_never_echoes_its_password() -> None:
    from shared.errors import SettingError

    encoded = DB_PASSWORD.replace("Q", "%51")  # the same password, percent-encoded as a URI may carry it
    for url in (
        f"postgresql://postgres:{DB_PASSWORD}@[::1/db",
        f"postgresql://postgres:{encoded}@[::1/db",
        f"host=x password='{DB_PASSWORD}' broken",
        f"postgresql://postgres@[::1/db?password={DB_PASSWORD}",
    ):
        with pytest.raises(SettingError) as raised:
            Settings({"DATABASE_URL": url}).database_url  # noqa: B018 - validates the setting
        message = raised.value.message
        assert DB_PASSWORD not in message and encoded not in message, message
        tally.add("secrets_checked")
    with pytest.raises(psycopg.ProgrammingError):  # libpq itself does echo it: the masking is ours
        conninfo_to_dict(f"postgresql://postgres:{DB_PASSWORD}@[::1/db")
