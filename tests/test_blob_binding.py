"""The blob trigger receives a BlobClient, never the blob: an oversized file is refused from its
properties, without its bytes crossing the network or sitting in the worker's memory.

Bytes are counted by a TCP proxy between the app and Azurite (what Storage sent the app), and the
worker's peak memory is read in a process of its own (/proc/self/status VmHWM, reset before the
delivery), so neither depends on what the test process did before.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from scripts.services import ROOT, Azurite, free_port
from shared.catalogue import image_id
from shared.images import MAX_BYTES
from shared.runtime import Runtime, build_runtime, set_runtime
from tests.appfns import blob_trigger_client, handler
from tests.imagegen import image_bytes

MB = 1024 * 1024


class CountingProxy:
    """Forwards 127.0.0.1:<port> to Azurite's blob port and counts the bytes Azurite sends back."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self.received = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if count:
                    with self._lock:
                        self.received += len(chunk)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def reset(self) -> None:
        with self._lock:
            self.received = 0

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def proxy(azurite: Azurite) -> Iterator[CountingProxy]:
    p = CountingProxy(azurite.blob_port)
    yield p
    p.close()


@pytest.fixture
def proxied(runtime: Runtime, proxy: CountingProxy, azurite: Azurite) -> Iterator[Runtime]:
    """The runtime, reading Storage through the counting proxy."""
    direct = runtime.settings.raw("ImagesStorage") or ""
    through = direct.replace(f"127.0.0.1:{azurite.blob_port}/", f"127.0.0.1:{proxy.port}/")
    settings = runtime.settings.with_overrides({"ImagesStorage": through})
    rt = build_runtime(settings)
    set_runtime(rt)
    yield rt
    set_runtime(runtime)
    rt.close()


def upload_zeros(rt: Runtime, name: str, size: int) -> None:
    head = image_bytes("red")
    rt.blobs.container.upload_blob(name, head + b"\0" * (size - len(head)), overwrite=True)


@pytest.mark.parametrize("size_mb", [21, 100])
def test_an_oversized_blob_is_refused_from_its_properties_without_reading_it(
    runtime: Runtime, proxied: Runtime, proxy: CountingProxy, size_mb: int
) -> None:
    name = f"video-{size_mb}.bin"
    upload_zeros(runtime, name, size_mb * MB)
    connection = proxied.settings.raw("ImagesStorage") or ""
    proxy.reset()
    handler("index_image")(blob_trigger_client(connection, proxied.settings.images_container, name))
    transferred = proxy.received
    row = runtime.store.catalogue.get_image(image_id(runtime.settings.images_container, name))
    assert row is not None and row.status == "failed" and row.failure_code == "TooLarge"
    assert row.byte_size == size_mb * MB and row.sha256 is None  # refused unread: nothing to hash
    # A HEAD and the answer's headers: a few kilobytes, where the blob is megabytes past the 20 MB cap.
    assert transferred < 64 * 1024, f"{transferred:,} bytes came from Storage for a {size_mb} MB blob"
    print(f"\n{size_mb} MB blob: {transferred:,} bytes from Storage")


def test_an_image_under_the_cap_is_read_once(runtime: Runtime, proxied: Runtime, proxy: CountingProxy) -> None:
    data = image_bytes("blue", (400, 300))
    runtime.blobs.upload("photo.jpg", data, "image/jpeg")
    connection = proxied.settings.raw("ImagesStorage") or ""
    proxy.reset()
    handler("index_image")(blob_trigger_client(connection, proxied.settings.images_container, "photo.jpg"))
    row = runtime.store.catalogue.get_image(image_id(runtime.settings.images_container, "photo.jpg"))
    assert row is not None and row.status == "indexed"
    assert len(data) <= proxy.received < len(data) + 64 * 1024  # the bytes once, plus headers


WORKER = """
import json, os, sys
from pathlib import Path
sys.path.insert(0, os.environ["ROOT"])
from shared.runtime import build_runtime, set_runtime
from shared.settings import Settings
from tests.appfns import blob_trigger_client, handler

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

settings = Settings(json.loads(os.environ["WORKER_SETTINGS"]))
rt = build_runtime(settings)
set_runtime(rt)
warm = blob_trigger_client(settings.raw("ImagesStorage"), settings.images_container, os.environ["WARM"])
handler("index_image")(warm)  # imports, pools and clients in place before measuring
client = blob_trigger_client(settings.raw("ImagesStorage"), settings.images_container, os.environ["BLOB"])
Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
before = status("VmRSS")
handler("index_image")(client)
print(json.dumps({"before": before, "peak": status("VmHWM")}))
rt.close()
"""


def test_the_worker_s_memory_does_not_grow_with_an_oversized_blob(runtime: Runtime) -> None:
    upload_zeros(runtime, "huge.bin", 100 * MB)
    runtime.blobs.upload("warm.jpg", image_bytes("green"), "image/jpeg")
    env = {
        **os.environ,
        "ROOT": str(ROOT),
        "WORKER_SETTINGS": json.dumps(dict(runtime.settings._env)),  # the test's own settings
        "BLOB": "huge.bin",
        "WARM": "warm.jpg",
    }
    out = subprocess.run(
        [sys.executable, "-c", WORKER], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT, check=True
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    growth = figures["peak"] - figures["before"]
    print(f"\npeak RSS growth for a 100 MB blob: {growth / MB:.1f} MB")
    # The old binding copied up to 20 MB + 1 byte into the worker (and the host held all 100 MB).
    assert growth < MAX_BYTES // 4, f"peak RSS grew {growth / MB:.1f} MB for a 100 MB blob"
    row = runtime.store.catalogue.get_image(image_id(runtime.settings.images_container, "huge.bin"))
    assert row is not None and row.failure_code == "TooLarge"
