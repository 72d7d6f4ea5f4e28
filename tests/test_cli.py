"""The command line as an operator meets it: one line per mistake, an exit code that says what to do next,
and an answer within seconds when a service is unreachable (issue #16, items 4, 5, 7, 8 and 9).

Everything runs against the real services the fixtures start (Azurite, PostgreSQL, the fake Vision
server); "unreachable" is a port nothing listens on.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from scripts.services import AZURITE_ACCOUNT, AZURITE_KEY, ROOT, Azurite, free_port
from shared.blobs import ImageBlobs, StorageUnavailable
from shared.cli import EXIT_CODES, Exit, build_parser
from shared.cli import main as cli_main
from shared.errors import AccessDenied, ResourceMissing
from shared.images import MAX_BYTES
from shared.runtime import Runtime, build_runtime
from shared.settings import SETTING_NAMES, Settings
from shared.store import Store
from tests.conftest import prepare
from tests.fake_vision import FakeVision
from tests.imagegen import image_bytes


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float

    @property
    def error_lines(self) -> list[str]:
        """What the command printed on stderr, progress bars aside."""
        return [line for line in self.err.splitlines() if line.strip() and "it/s" not in line and "|" not in line]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> CliRunner:
    """Runs ``python -m shared.cli`` in this process with only the settings a test gives it."""
    for name in (*SETTING_NAMES, "ImagesStorage__blobServiceUri", "ImagesStorage__accountName"):
        monkeypatch.delenv(name, raising=False)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # no local.settings.json: the environment alone
    return CliRunner(monkeypatch, capsys)


class CliRunner:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        self.monkeypatch = monkeypatch
        self.capsys = capsys

    def use(self, settings: Settings | None = None, **values: str) -> None:
        names = ("DATABASE_URL", "ImagesStorage", "IMAGES_CONTAINER", "THUMBNAILS_CONTAINER", "VISION_ENDPOINT")
        for name in (*names, "VISION_KEY", "VISION_MAX_RETRY_SECONDS"):
            value = settings.raw(name) if settings is not None else None
            if value is not None:
                self.monkeypatch.setenv(name, value)
        for name, value in values.items():
            self.monkeypatch.setenv(name, value)

    def __call__(self, *args: str) -> Run:
        self.capsys.readouterr()
        started = time.monotonic()
        code = cli_main(list(args))
        seconds = time.monotonic() - started
        captured = self.capsys.readouterr()
        return Run(code, captured.out, captured.err, seconds)


def run_process(args: list[str], env: dict[str, str], cwd: Path) -> Run:
    """The CLI in its own process: what a user's terminal shows, logging configuration included."""
    base = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "HOME": str(cwd)}
    started = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "shared.cli", *args], env={**base, **env}, cwd=cwd, capture_output=True, text=True
    )
    return Run(p.returncode, p.stdout, p.stderr, time.monotonic() - started)


@pytest.fixture
def fresh_settings(app_settings: Settings, store: Store) -> Settings:
    """``app_settings`` over an emptied collection, migrated for its model: other tests leave other
    models active, and the CLI rightly warns about that."""
    prepare(app_settings)
    return app_settings


def unreachable_storage() -> str:
    """A connection string for an account whose endpoint nothing listens on."""
    port = free_port()
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )


def wrong_key(azurite: Azurite) -> str:
    return azurite.connection_string.replace(AZURITE_KEY, "A" * 86 + "==")


def one_line(run: Run) -> str:
    lines = run.error_lines
    assert len(lines) == 1, run.err
    assert "Traceback" not in run.err
    return lines[0]


# --- exit codes ------------------------------------------------------------------------------------


def test_help_and_readme_list_the_same_exit_codes() -> None:
    text = build_parser().format_help()
    readme = (ROOT / "README.md").read_text()
    cli_section = readme.split("## Command line", 1)[1].split("\n## ", 1)[0]
    assert [int(code) for code, _ in EXIT_CODES] == [0, 1, 2, 3, 4, 130]
    for code, meaning in EXIT_CODES:
        assert re.search(rf"^\s+{int(code)}\s+{re.escape(meaning.split(':')[0])}", text, re.MULTILINE), code
        assert re.search(rf"^\| `{int(code)}` \| {re.escape(meaning.split(':')[0])}", cli_section, re.MULTILINE), code


def test_a_usage_mistake_is_bad_input(cli: CliRunner) -> None:
    with pytest.raises(SystemExit) as exited:
        cli("upload")
    assert exited.value.code == Exit.BAD_INPUT == 1


# --- item 4: storage mistakes get one line and exit 4 ----------------------------------------------


def test_reconcile_when_the_images_container_does_not_exist_names_it_and_exits_4(
    cli: CliRunner, fresh_settings: Settings
) -> None:
    # A misspelt IMAGES_CONTAINER and "before the first upload" look the same to Storage: no such container.
    app_settings = fresh_settings
    cli.use(app_settings)
    run = cli("reconcile")
    line = one_line(run)
    assert run.code == Exit.REFUSED == 4
    container = app_settings.images_container
    assert line.startswith("error: container ") and f"'{container}' does not exist" in line, line
    assert "IMAGES_CONTAINER" in line and "create it" in line


def test_upload_with_a_wrong_account_key_says_so_in_one_line(cli: CliRunner, azurite: Azurite, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(image_bytes(fmt="PNG"))
    cli.use(ImagesStorage=wrong_key(azurite), IMAGES_CONTAINER="wrong-key")
    run = cli("upload", str(tmp_path / "a.png"))
    line = one_line(run)
    assert run.code == Exit.REFUSED
    assert f"storage account '{AZURITE_ACCOUNT}' refused" in line and "403" in line, line
    assert "account key in ImagesStorage" in line
    assert AZURITE_KEY not in run.err and "A" * 86 not in run.err


def test_reconcile_with_a_wrong_account_key_exits_4(cli: CliRunner, fresh_settings: Settings, azurite: Azurite) -> None:
    cli.use(fresh_settings, ImagesStorage=wrong_key(azurite))
    run = cli("reconcile")
    assert run.code == Exit.REFUSED
    assert "403" in one_line(run)


def test_storage_refusals_become_the_projects_errors(app_settings: Settings, azurite: Azurite) -> None:
    missing = ImageBlobs.from_settings(app_settings)
    with pytest.raises(ResourceMissing) as not_found:
        list(missing.list())
    assert not_found.value.code == "ContainerNotFound"
    refused = ImageBlobs.from_settings(app_settings.with_overrides({"ImagesStorage": wrong_key(azurite)}))
    with pytest.raises(AccessDenied) as denied:
        list(refused.list())
    assert "\n" not in denied.value.message


def test_upload_says_when_it_creates_the_container(cli: CliRunner, azurite: Azurite, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(image_bytes(fmt="PNG"))
    container = f"new-{uuid.uuid4().hex[:8]}"
    cli.use(ImagesStorage=azurite.connection_string, IMAGES_CONTAINER=container)
    run = cli("upload", str(tmp_path / "a.png"))
    assert run.code == Exit.OK
    assert f"created container '{container}'" in run.err
    assert cli("upload", str(tmp_path / "a.png")).err.count("created container") == 0


# --- item 5: upload goes on past odd files and says what it skipped --------------------------------


@pytest.fixture
def upload_to(cli: CliRunner, azurite: Azurite) -> ImageBlobs:
    container = f"up-{uuid.uuid4().hex[:8]}"
    cli.use(ImagesStorage=azurite.connection_string, IMAGES_CONTAINER=container)
    settings = Settings({"ImagesStorage": azurite.connection_string, "IMAGES_CONTAINER": container})
    return ImageBlobs.from_settings(settings)


def blob_names(blobs: ImageBlobs) -> set[str]:
    return {b.name for b in blobs.list()}


def test_upload_skips_a_file_name_that_is_not_utf8_names_it_and_goes_on(
    cli: CliRunner, upload_to: ImageBlobs, tmp_path: Path
) -> None:
    folder = tmp_path / "old-zip"
    folder.mkdir()
    (folder / "a.png").write_bytes(image_bytes("red", fmt="PNG"))
    # A Latin-1 name from an old archive: on Linux a name is bytes, and these are not UTF-8.
    with open(os.fsencode(folder) + b"/caf\xe9.jpg", "wb") as f:
        f.write(image_bytes("blue"))
    (folder / "z.png").write_bytes(image_bytes("green", fmt="PNG"))

    run = cli("upload", str(folder))
    assert run.code == Exit.OK, run.err
    assert blob_names(upload_to) == {"a.png", "z.png"}
    assert "uploaded 2 file(s)" in run.out and "1 with a name that is not UTF-8" in run.out, run.out
    assert re.search(r"skipped .*caf\\xe9\.jpg: its name is not valid UTF-8", run.err), run.err


def test_upload_calls_an_oversized_image_too_large_not_a_non_image(
    cli: CliRunner, upload_to: ImageBlobs, tmp_path: Path
) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    Image.new("RGB", (2700, 2700), (200, 10, 10)).save(folder / "huge.bmp")  # a real image of 21.9 MB
    assert (folder / "huge.bmp").stat().st_size > MAX_BYTES
    (folder / "notes.txt").write_text("not an image")
    (folder / "ok.png").write_bytes(image_bytes(fmt="PNG"))

    run = cli("upload", str(folder))
    assert run.code == Exit.OK
    assert "uploaded 1 file(s)" in run.out
    assert "1 not an image" in run.out and "1 too large (over 20 MB)" in run.out, run.out
    assert re.search(r"skipped .*huge\.bmp: .*too large", run.err), run.err
    assert blob_names(upload_to) == {"ok.png"}


def test_upload_counts_the_hidden_files_it_skips_and_uploads_one_named_explicitly(
    cli: CliRunner, upload_to: ImageBlobs, tmp_path: Path
) -> None:
    folder = tmp_path / "camera"
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "config").write_text("[core]")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "._IMG_1.jpg").write_bytes(b"\0\5\26\7AppleDouble")  # macOS resource fork, named like an image
    (folder / "IMG_1.jpg").write_bytes(image_bytes())
    (tmp_path / ".cover.png").write_bytes(image_bytes(fmt="PNG"))

    run = cli("upload", str(folder))
    assert run.code == Exit.OK
    assert "uploaded 1 file(s)" in run.out and "3 hidden" in run.out, run.out
    assert blob_names(upload_to) == {"IMG_1.jpg"}

    run = cli("upload", str(tmp_path / ".cover.png"))  # asked for by name: uploaded
    assert run.code == Exit.OK and "uploaded 1 file(s)" in run.out
    assert blob_names(upload_to) == {"IMG_1.jpg", ".cover.png"}


# --- item 7: an unreachable service gets one line within seconds -----------------------------------


def test_upload_with_storage_unreachable_fails_within_seconds_in_one_line(cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(image_bytes(fmt="PNG"))
    cli.use(ImagesStorage=unreachable_storage())
    run = cli("upload", str(tmp_path / "a.png"))
    line = one_line(run)
    assert run.code == Exit.TEMPORARY
    assert "storage unreachable" in line and "ImagesStorage" in line, line
    assert run.seconds < 20  # the SDK's defaults took 87 s; the CLI's profile about 3 s


def test_reconcile_with_storage_unreachable_fails_within_seconds_in_one_line(
    cli: CliRunner, fresh_settings: Settings
) -> None:
    cli.use(fresh_settings, ImagesStorage=unreachable_storage())
    run = cli("reconcile")
    assert run.code == Exit.TEMPORARY
    assert "storage unreachable" in one_line(run)
    assert run.seconds < 20  # 83 s before


class FakeCredential:
    def get_token(self, *scopes: str, **kwargs: object) -> SimpleNamespace:
        return SimpleNamespace(token="token", expires_on=int(time.time()) + 3600)


def test_read_links_give_up_fast_when_storage_is_unreachable() -> None:
    # With a managed identity, a read link needs a user delegation key from Storage: a search must not
    # wait for the SDK's default retries (a minute) to answer 503.
    settings = Settings({"ImagesStorage__blobServiceUri": f"https://127.0.0.1:{free_port()}"})
    blobs = ImageBlobs.from_settings(settings, credential=FakeCredential())
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        blobs.read_link("a.jpg", 15)
    assert time.monotonic() - started < 10


# --- item 8: the thumbnails container exists where images are indexed ------------------------------


def test_the_local_stack_creates_the_thumbnails_container_too(azurite: Azurite) -> None:
    from scripts.local import create_containers

    name = f"loc-{uuid.uuid4().hex[:8]}"
    env = {"ImagesStorage": azurite.connection_string, "IMAGES_CONTAINER": name, "THUMBNAILS_CONTAINER": f"{name}-t"}
    assert create_containers(env) == [name, f"{name}-t"]
    assert create_containers(env) == []  # safe to run again
    blobs = ImageBlobs.from_settings(Settings(env))
    assert blobs.container.exists()
    assert blobs.thumbnails is not None and blobs.thumbnails.exists()


def test_a_missing_thumbnails_container_is_created_on_first_use(
    runtime: Runtime, fake_vision: FakeVision, caplog: pytest.LogCaptureFixture
) -> None:
    from shared.ingest import ingest_blob

    # Images uploaded with Storage Explorer into a container made by hand: no thumbnails container yet.
    settings = runtime.settings.with_overrides({"THUMBNAILS_CONTAINER": f"th-{uuid.uuid4().hex[:8]}"})
    rt = build_runtime(settings)
    try:
        assert rt.blobs.thumbnails is not None and not rt.blobs.thumbnails.exists()
        rt.blobs.upload("first.png", image_bytes(fmt="PNG"), "image/png")
        with caplog.at_level("WARNING"):
            outcome = ingest_blob(rt, "first.png")
        assert outcome.outcome == "indexed"
        assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []
        assert [b.name for b in rt.blobs.thumbnails.list_blobs()] == ["first.png"]
    finally:
        rt.close()


# --- item 9: a wrong DATABASE_URL is configuration, an outage is temporary -------------------------


def test_a_database_host_that_does_not_exist_is_a_setting_to_fix(cli: CliRunner) -> None:
    try:
        socket.getaddrinfo("nohost.invalid", 5432)
    except socket.gaierror as exc:
        if exc.errno != socket.EAI_NONAME:
            pytest.skip(f"this machine's resolver does not answer ({exc}): cannot tell a name that does not exist")
    cli.use(DATABASE_URL="postgresql://postgres@nohost.invalid:5432/imagesearch")
    run = cli("stats")
    line = one_line(run)
    assert run.code == Exit.CONFIGURATION == 2
    assert line.startswith("error: setting DATABASE_URL names host 'nohost.invalid', which does not exist"), line
    assert "temporary" not in line


@pytest.mark.parametrize("command", ["stats", "reconcile", "init-db"])
def test_nothing_listening_on_a_local_database_port_is_a_setting_to_fix(
    cli: CliRunner, app_settings: Settings, command: str
) -> None:
    port = free_port()
    cli.use(app_settings, DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/imagesearch")
    run = cli(command)
    line = one_line(run)
    assert run.code == Exit.CONFIGURATION
    assert f"setting DATABASE_URL points at 127.0.0.1:{port} on this machine, where nothing listens" in line, line
    assert run.seconds < 10


def test_a_local_database_that_comes_back_within_seconds_stays_temporary(cli: CliRunner) -> None:
    # A server restarting: refused now, listening again a moment later. Retrying helps, so: temporary.
    port = free_port()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def come_back() -> None:
        time.sleep(0.8)
        server.bind(("127.0.0.1", port))
        server.listen()

    thread = threading.Thread(target=come_back)
    thread.start()
    try:
        cli.use(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/imagesearch?connect_timeout=2")
        run = cli("stats")
    finally:
        thread.join()
        server.close()
    line = one_line(run)
    assert run.code == Exit.TEMPORARY, line
    assert line.endswith("(temporary: try again)")


def test_an_unreachable_remote_database_stays_temporary(cli: CliRunner) -> None:
    # 192.0.2.1 is TEST-NET-1: never routed. A remote server that does not answer may be restarting.
    cli.use(DATABASE_URL="postgresql://postgres@192.0.2.1:5432/imagesearch?connect_timeout=2")
    run = cli("stats")
    line = one_line(run)
    assert run.code == Exit.TEMPORARY, line
    assert "DATABASE_URL" in line


def test_upload_of_a_missing_path_names_the_path_not_a_setting(cli: CliRunner, azurite: Azurite) -> None:
    cli.use(ImagesStorage=azurite.connection_string)
    run = cli("upload", "/missing")
    assert one_line(run) == "error: no such file or folder: /missing"
    assert run.code == Exit.BAD_INPUT


def test_search_with_vision_unreachable_prints_one_line_unless_verbose(
    database_url: str, store: Store, azurite: Azurite, tmp_path: Path
) -> None:
    env = {
        "DATABASE_URL": database_url,
        "ImagesStorage": azurite.connection_string,
        "VISION_ENDPOINT": f"http://127.0.0.1:{free_port()}/",
        "VISION_KEY": "key",
        "VISION_MAX_RETRY_SECONDS": "2",
    }
    prepare(Settings(env))  # migrated: the model is registered without calling Vision
    quiet = run_process(["search", "a", "red", "boat"], env, tmp_path)
    assert quiet.code == Exit.TEMPORARY
    assert quiet.err.count("\n") == 1 and quiet.err.startswith("error: Azure AI Vision is unavailable"), quiet.err
    verbose = run_process(["-v", "search", "a", "red", "boat"], env, tmp_path)
    assert verbose.code == Exit.TEMPORARY
    assert "WARNING Azure AI Vision text call failed" in verbose.err
