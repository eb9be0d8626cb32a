"""A real GCS JSON API for tests: `gcp-storage-emulator`, one per test session.

Import the fixtures into a test module (`from gcs_emulator import gcs_emulator, gcs_root,
workroot  # noqa: F401`). `gcs_root` gives each test a fresh `gs://lmc-test/<id>` prefix;
`workroot` runs a test twice, on a local tmp dir and on the emulator. Both skip, with
the reason, where the emulator cannot start (package missing, no free port, startup
failure).

The environment is set for this process and for every subprocess a test starts:
- `STORAGE_EMULATOR_HOST`: gcsfs (hence etils.epath, hence Orbax's path handling)
  talks to the emulator, anonymously;
- `TENSORSTORE_GCS_HTTP_URL`: tensorstore's `gcs` driver (Orbax's array data) does too;
- `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`: gcsfs >= 2026.10 otherwise makes its
  `GCSFileSystem` the `ExtendedGcsFileSystem`, which asks the Storage Control *gRPC*
  API for the bucket type before operations; the emulator has no gRPC, so each lookup
  spends 60 s in retries and then falls back. The variable is read when gcsfs is
  imported, so the fixture also re-registers gcsfs's plain class with fsspec in case
  gcsfs was imported earlier.

The emulator runs from this file (`python tests/gcs_emulator.py PORT`) with one
fidelity fix: its object downloads lack the `x-goog-generation` header that GCS always
sends. Tensorstore's OCDBT driver (Orbax's array format) reads the manifest's generation
from that header and then writes the manifest conditionally on it; without it the write
fails with "Malformed StorageGeneration" whenever the manifest is re-read instead of
served from tensorstore's cache (reproducible with two contexts; flaky within a save).
The second fix: the emulator ignored write preconditions. Here uploads (media,
multipart, resumable), deletes and metadata patches honour `ifGenerationMatch` and
`ifGenerationNotMatch` as GCS does (`0`: the object must not exist), answering HTTP 412
otherwise, so races that only those preconditions decide (two runs taking the workdir
lock at once, `tests/runtime/test_io_lock.py`) are tested. The server handles one request at a
time, so a check and its write cannot interleave with another request.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass

import pytest

BUCKET = "lmc-test"  # GCS bucket names need 3-63 characters (tensorstore checks)
_START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Emulator:
    url: str  # http://127.0.0.1:PORT
    bucket: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen) -> str | None:
    """None once the emulator answers for the bucket; else why it did not."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with code {proc.returncode}"
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}", timeout=2) as r:
                if r.status == 200:
                    return None
        except OSError:
            pass
        time.sleep(0.1)
    return f"did not answer within {_START_TIMEOUT_S:.0f} s"


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    try:
        import gcp_storage_emulator  # noqa: F401
        import gcsfs  # noqa: F401
    except ImportError as e:
        pytest.skip(f"GCS emulator tests need `pip install gcp-storage-emulator gcsfs` ({e})")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("gcs_emulator") / "emulator.log"
    log = open(log_path, "wb")  # noqa: SIM115 (closed at teardown)
    cmd = [sys.executable, os.path.abspath(__file__), str(port)]
    try:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    except OSError as e:
        log.close()
        pytest.skip(f"cannot start the GCS emulator ({' '.join(cmd)}): {e}")
    why = _wait_until_up(url, proc)
    if why is not None:
        proc.kill()
        proc.wait()
        log.close()
        tail = log_path.read_text(errors="replace")[-500:]
        pytest.skip(f"GCS emulator {why}: {' '.join(cmd)}\n{tail}")

    names = [
        "STORAGE_EMULATOR_HOST",
        "TENSORSTORE_GCS_HTTP_URL",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT",
    ]
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(
        STORAGE_EMULATOR_HOST=url,
        TENSORSTORE_GCS_HTTP_URL=url,
        GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
    )
    import fsspec
    import gcsfs.core

    for protocol in ("gs", "gcs"):
        fsspec.register_implementation(protocol, gcsfs.core.GCSFileSystem, clobber=True)
    try:
        yield Emulator(url=url, bucket=BUCKET)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def gcs_root(gcs_emulator, request) -> str:
    """A fresh, empty `gs://` prefix for this test (nothing is created until written)."""
    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")
    return f"gs://{gcs_emulator.bucket}/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["local", "gcs"])
def workroot(request, tmp_path) -> str:
    """A directory to work in: a local tmp dir, then a gs:// prefix on the emulator."""
    if request.param == "local":
        return str(tmp_path)
    return request.getfixturevalue("gcs_root")


def _serve(port: int) -> None:
    """Run the emulator in this process, in memory, until killed."""
    import threading

    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    original = objects.download

    def download(request, response, storage, *args, **kwargs):
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except Exception:  # not found: the original handler answers 404
            obj = None
        if obj:
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj["metageneration"])
        return original(request, response, storage, *args, **kwargs)

    objects.download = download  # objects.get(alt=media) calls it by name
    replaced = {original: download}
    for name, target in (
        ("insert", _upload_target),
        ("upload_partial", _resumable_target),
        ("delete", _path_target),
        ("patch", _path_target),
    ):
        handler = getattr(objects, name)
        replaced[handler] = _with_preconditions(handler, target)
        setattr(objects, name, replaced[handler])  # the server's fallbacks call them by name
    for _, table in server.HANDLERS:
        for method, handler in table.items():
            if handler in replaced:
                table[method] = replaced[handler]
    server.create_server("127.0.0.1", port, True, BUCKET).start()
    print(f"GCS emulator on 127.0.0.1:{port}, bucket {BUCKET}", flush=True)
    threading.Event().wait()


def _with_preconditions(handler, target):
    """`handler` that first answers 412 where the request's generation preconditions do
    not hold for the object `target(request, storage)` names."""
    from http import HTTPStatus

    def checked(request, response, storage, *args, **kwargs):
        match = request.query.get("ifGenerationMatch")
        not_match = request.query.get("ifGenerationNotMatch")
        if match or not_match:
            bucket, name = target(request, storage)
            generation = _generation(storage, bucket, name)
            if (match and match[0] != generation) or (not_match and not_match[0] == generation):
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "Precondition Failed",
                                         "errors": [{"reason": "conditionNotMet"}]}})  # fmt: skip
                return None
        return handler(request, response, storage, *args, **kwargs)

    return checked


def _generation(storage, bucket: str, name: str | None) -> str:
    """The live object's generation, "0" where there is none (GCS's convention)."""
    try:
        return str(storage.get_file_obj(bucket, name)["generation"])
    except Exception:  # NotFound
        return "0"


def _upload_target(request, storage):
    name = request.query.get("name", [None])[0]
    if name is None and request.query.get("uploadType") == ["multipart"]:
        name = request.data["meta"].get("name")
    elif name is None and isinstance(request.data, dict):
        name = request.data.get("name")  # resumable: the metadata in the body
    return request.params["bucket_name"], name


def _resumable_target(request, storage):
    # The session URL repeats the creating request's query, preconditions included.
    obj = storage.get_resumable_file_obj(request.query["upload_id"][0])
    return obj["bucket"], obj["name"]


def _path_target(request, storage):
    return request.params["bucket_name"], request.params["object_id"]


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
