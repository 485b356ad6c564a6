"""Weights registry, cache, resumable download (against a real local HTTP server), import, CLI."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.server
import importlib.util
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from napari_ritm import weights
from napari_ritm.errors import CheckpointError, RitmError, WeightsNotFoundError
from napari_ritm.weights import WEIGHTS, WeightsSpec

OFFICIAL_BASE = "https://github.com/saic-vul/ritm_interactive_segmentation/releases/download/v1.0/"


def _has_model_io() -> bool:
    if importlib.util.find_spec("napari_ritm.model") is None:
        return False
    import napari_ritm.model as model

    return all(hasattr(model, n) for n in ("build_model", "save_checkpoint", "load_checkpoint"))


needs_model = pytest.mark.skipif(not _has_model_io(), reason="napari_ritm.model is not written yet")


# ---------------------------------------------------------------------------------------------
# A small HTTP server on 127.0.0.1 that serves byte strings, honours Range, and can misbehave.


class _Server:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[dict[str, str]] = []
        self.drop_after: int | None = None  # close the connection after this many body bytes
        self.ignore_range = False
        state = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                state.requests.append({"path": self.path, "range": self.headers.get("Range", "")})
                data = state.files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng and not state.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if state.drop_after is not None:
                    cut = state.drop_after
                    state.drop_after = None  # misbehave once
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server() -> Iterator[_Server]:
    srv = _Server()
    yield srv
    srv.close()


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("NAPARI_RITM_CACHE", str(folder))
    monkeypatch.delenv("NAPARI_RITM_WEIGHTS_URL", raising=False)
    return folder


def _add_entry(
    monkeypatch: pytest.MonkeyPatch, data: bytes | None, **changes: object
) -> WeightsSpec:
    """Register a test entry 'test.blob' whose file is blob.pth with the sha256 of ``data``."""
    fields = {
        "name": "test.blob",
        "file_name": "blob.pth",
        "variant": "hrnet18s",
        "with_prev_mask": True,
        "train_data": "none",
        "description": "test entry",
        "sha256": hashlib.sha256(data).hexdigest() if data is not None else None,
        "aliases": ("blob-alias",),
    }
    fields.update(changes)
    spec = WeightsSpec(**fields)  # type: ignore[arg-type]
    monkeypatch.setitem(WEIGHTS, spec.name, spec)
    return spec


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# ---------------------------------------------------------------------------------------------
# Registry and name resolution


def test_registry_has_the_five_official_files():
    official = {s.file_name: s for s in WEIGHTS.values() if s.kind == "official"}
    assert set(official) == {
        "sbd_h18_itermask.pth",
        "coco_lvis_h18_baseline.pth",
        "coco_lvis_h18s_itermask.pth",
        "coco_lvis_h18_itermask.pth",
        "coco_lvis_h32_itermask.pth",
    }
    expect = {  # file -> (variant, with_prev_mask, train data), ritm-reference §1.2
        "sbd_h18_itermask.pth": ("hrnet18", True, "SBD"),
        "coco_lvis_h18_baseline.pth": ("hrnet18", False, "COCO+LVIS"),
        "coco_lvis_h18s_itermask.pth": ("hrnet18s", True, "COCO+LVIS"),
        "coco_lvis_h18_itermask.pth": ("hrnet18", True, "COCO+LVIS"),
        "coco_lvis_h32_itermask.pth": ("hrnet32", True, "COCO+LVIS"),
    }
    for file_name, spec in official.items():
        assert (spec.variant, spec.with_prev_mask, spec.train_data) == expect[file_name]
        assert spec.sha256 is None  # no published hash
        assert spec.license == "MIT"
        assert spec.size
    assert official["coco_lvis_h18s_itermask.pth"].name == "hrnet18s.cocolvis_itermask"


def test_official_urls_and_override(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("NAPARI_RITM_WEIGHTS_URL", raising=False)
    spec = WEIGHTS["hrnet32.cocolvis_itermask"]
    assert spec.download_url() == OFFICIAL_BASE + "coco_lvis_h32_itermask.pth"
    assert (
        spec.download_url("http://127.0.0.1:1/x")
        == "http://127.0.0.1:1/x/coco_lvis_h32_itermask.pth"
    )
    monkeypatch.setenv("NAPARI_RITM_WEIGHTS_URL", "http://127.0.0.1:2/mirror/")
    assert spec.download_url() == "http://127.0.0.1:2/mirror/coco_lvis_h32_itermask.pth"
    assert WEIGHTS[weights.DEFAULT_MODEL].download_url() is None  # shipped: never downloaded


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("hrnet18s", "hrnet18s.cocolvis_itermask"),
        ("coco_lvis_h18s_itermask", "hrnet18s.cocolvis_itermask"),
        ("coco_lvis_h18s_itermask.pth", "hrnet18s.cocolvis_itermask"),
        ("HRNet18S.cocolvis_itermask", "hrnet18s.cocolvis_itermask"),
        ("hrnet18", "hrnet18.cocolvis_itermask"),
        ("sbd_h18_itermask", "hrnet18.sbd_itermask"),
        ("coco_lvis_h18_baseline", "hrnet18.cocolvis_baseline"),
        ("hrnet32", "hrnet32.cocolvis_itermask"),
    ],
)
def test_aliases(alias: str, canonical: str):
    spec = weights.lookup_weights(alias)
    assert spec is not None and spec.name == canonical


def test_aliases_are_unique():
    seen: dict[str, str] = {}
    for spec in WEIGHTS.values():
        for n in {spec.name, spec.file_name, *spec.aliases}:
            assert seen.setdefault(n.lower(), spec.name) == spec.name, n


def test_cache_dir_env(cache: Path, monkeypatch: pytest.MonkeyPatch):
    assert weights.get_cache_dir() == cache
    monkeypatch.setenv("NAPARI_RITM_CACHE", "~/somewhere")
    assert weights.get_cache_dir() == Path.home() / "somewhere"
    monkeypatch.delenv("NAPARI_RITM_CACHE")
    import pooch

    assert weights.get_cache_dir() == Path(pooch.os_cache("napari-ritm")).expanduser()


def test_resolve_paths_and_unknown_names(cache: Path, tmp_path: Path):
    ckpt = tmp_path / "my model.pth"
    ckpt.write_bytes(b"x")
    assert weights.resolve_weights(ckpt) == ckpt.resolve()
    assert weights.resolve_weights(str(ckpt)) == ckpt.resolve()
    with pytest.raises(WeightsNotFoundError, match="no checkpoint file at"):
        weights.resolve_weights(str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsNotFoundError, match="is a folder"):
        weights.resolve_weights(tmp_path)
    with pytest.raises(WeightsNotFoundError, match=r"unknown model 'nonsense'.*weights list"):
        weights.resolve_weights("nonsense")
    # A cached official file resolves without any network access.
    cache.mkdir(parents=True)
    (cache / "coco_lvis_h18_itermask.pth").write_bytes(b"y")
    assert weights.resolve_weights("hrnet18") == cache / "coco_lvis_h18_itermask.pth"
    with pytest.raises(WeightsNotFoundError, match=r"weights fetch hrnet32\.cocolvis_itermask"):
        weights.resolve_weights("hrnet32", download=False)


def test_default_model_not_shipped_yet(cache: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(weights, "_CHECKPOINT_DIR", tmp_path / "no-checkpoints")
    for name in (None, weights.DEFAULT_MODEL):
        with pytest.raises(WeightsNotFoundError, match="not shipped") as info:
            weights.resolve_weights(name)
        assert "hrnet18s" in str(info.value)  # says what to use instead
        assert str(tmp_path / "no-checkpoints") in str(info.value)
    with pytest.raises(WeightsNotFoundError, match="not shipped"):
        weights.fetch_weights(weights.DEFAULT_MODEL)
    default = next(i for i in weights.list_weights() if i.name == weights.DEFAULT_MODEL)
    assert (default.kind, default.cached, default.status) == ("shipped", False, "not shipped yet")
    # Once the file exists it is what the default resolves to.
    shipped = tmp_path / "no-checkpoints" / WEIGHTS[weights.DEFAULT_MODEL].file_name
    shipped.parent.mkdir()
    shipped.write_bytes(b"z")
    assert weights.resolve_weights(None) == shipped
    default = next(i for i in weights.list_weights() if i.name == weights.DEFAULT_MODEL)
    assert (default.cached, default.status) == (True, "shipped")


def test_list_weights_reports_cache_state(cache: Path):
    infos = {i.name: i for i in weights.list_weights()}
    assert set(WEIGHTS) <= set(infos)
    h18s = infos["hrnet18s.cocolvis_itermask"]
    assert (h18s.kind, h18s.variant, h18s.cached, h18s.status) == (
        "official",
        "hrnet18s",
        False,
        "not downloaded",
    )
    assert h18s.path == cache / "coco_lvis_h18s_itermask.pth"
    assert h18s.url == OFFICIAL_BASE + "coco_lvis_h18s_itermask.pth"
    cache.mkdir()
    h18s.path.write_bytes(b"x")
    again = {i.name: i for i in weights.list_weights()}["hrnet18s.cocolvis_itermask"]
    assert (again.cached, again.status) == (True, "cached")


# ---------------------------------------------------------------------------------------------
# Downloads


def test_fetch_downloads_verifies_and_caches(server: _Server, cache: Path, monkeypatch):
    data = bytes(range(256)) * 1000
    server.files["blob.pth"] = data
    _add_entry(monkeypatch, data)
    monkeypatch.setenv("NAPARI_RITM_WEIGHTS_URL", server.base_url)
    seen: list[tuple[int, int, str]] = []
    path = weights.fetch_weights("blob-alias", progress=lambda d, t, m: seen.append((d, t, m)))
    assert path == cache / "blob.pth"
    assert path.read_bytes() == data
    assert _leftovers(cache) == ["blob.pth"]  # no .part or temporary files left
    assert seen[-1][:2] == (len(data), len(data)) and "blob.pth" in seen[-1][2]
    assert [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)
    # Second call: served from the cache, no request.
    n = len(server.requests)
    assert weights.fetch_weights("test.blob", progress=False) == path
    assert len(server.requests) == n
    # resolve_weights goes through the same cache.
    assert weights.resolve_weights("test.blob") == path


def test_fetch_base_url_argument(server: _Server, cache: Path, monkeypatch):
    server.files["sub/blob.pth"] = b"abc" * 100
    _add_entry(monkeypatch, b"abc" * 100)
    path = weights.fetch_weights("test.blob", progress=False, base_url=server.base_url + "sub")
    assert path.read_bytes() == b"abc" * 100
    assert server.requests[-1]["path"] == "/sub/blob.pth"


def test_wrong_hash_is_rejected_and_leaves_no_file(server: _Server, cache: Path, monkeypatch):
    server.files["blob.pth"] = b"real content" * 1000
    _add_entry(monkeypatch, b"other content")
    with pytest.raises(WeightsNotFoundError, match="sha256") as info:
        weights.fetch_weights("test.blob", progress=False, base_url=server.base_url)
    assert server.base_url + "blob.pth" in str(info.value)
    assert _leftovers(cache) == []


def test_interrupted_download_resumes_with_range(server: _Server, cache: Path, monkeypatch):
    data = hashlib.sha512(b"seed").digest() * 4000  # 256 kB
    server.files["blob.pth"] = data
    _add_entry(monkeypatch, data)
    server.drop_after = 100_000
    with pytest.raises(WeightsNotFoundError) as info:
        weights.fetch_weights("test.blob", progress=False, base_url=server.base_url, retries=0)
    part = cache / "blob.pth.part"
    assert part.read_bytes() == data[:100_000]  # partial bytes kept, under a .part name
    assert not (cache / "blob.pth").exists()  # nothing where a good file is expected
    assert "resumes" in str(info.value) and str(part) in str(info.value)
    path = weights.fetch_weights("test.blob", progress=False, base_url=server.base_url, retries=0)
    assert path.read_bytes() == data
    assert server.requests[-1]["range"] == "bytes=100000-"
    assert _leftovers(cache) == ["blob.pth"]


def test_retry_within_one_call_resumes(server: _Server, cache: Path, monkeypatch):
    data = b"0123456789" * 20_000
    server.files["blob.pth"] = data
    _add_entry(monkeypatch, data)
    server.drop_after = 65_536 + 17
    path = weights.fetch_weights("test.blob", progress=False, base_url=server.base_url, retries=1)
    assert path.read_bytes() == data
    assert [r["range"] for r in server.requests] == ["", "bytes=65553-"]


def test_resume_when_server_ignores_range(server: _Server, cache: Path, monkeypatch):
    data = b"abcdefgh" * 10_000
    server.files["blob.pth"] = data
    _add_entry(monkeypatch, data)
    cache.mkdir()
    (cache / "blob.pth.part").write_bytes(data[:1234])
    server.ignore_range = True  # answers 200 with the whole file: must restart, not append
    path = weights.fetch_weights("test.blob", progress=False, base_url=server.base_url)
    assert path.read_bytes() == data


def test_stale_part_longer_than_file_restarts(server: _Server, cache: Path, monkeypatch):
    data = b"short file"
    server.files["blob.pth"] = data
    _add_entry(monkeypatch, None)  # unknown hash: only the size can be checked
    cache.mkdir()
    (cache / "blob.pth.part").write_bytes(b"x" * 100)  # 416 from the server -> start again
    path = weights.fetch_weights("test.blob", progress=False, base_url=server.base_url)
    assert path.read_bytes() == data


def test_complete_part_file_is_not_downloaded_again(server: _Server, cache: Path, monkeypatch):
    data = b"complete" * 1000
    server.files["blob.pth"] = data
    _add_entry(monkeypatch, data)
    cache.mkdir()
    (cache / "blob.pth.part").write_bytes(data)  # e.g. killed between download and rename
    path = weights.fetch_weights("test.blob", progress=False, base_url=server.base_url)
    assert path.read_bytes() == data
    assert [r["range"] for r in server.requests] == [f"bytes={len(data)}-"]  # answered 416


def test_tqdm_progress_bar(server: _Server, cache: Path, monkeypatch, capsys):
    data = b"p" * 300_000
    server.files["blob.pth"] = data
    _add_entry(monkeypatch, data)
    weights.fetch_weights("test.blob", progress=True, base_url=server.base_url)
    err = capsys.readouterr().err
    assert "blob.pth" in err and "300k" in err  # tqdm bar with unit_scale on stderr


def test_offline_error_names_url_cache_path_and_env(cache: Path, monkeypatch):
    _add_entry(monkeypatch, b"x")
    base = f"http://127.0.0.1:{_free_port()}/weights/"  # nothing listens there
    with pytest.raises(WeightsNotFoundError) as info:
        weights.fetch_weights("test.blob", progress=False, base_url=base, retries=0)
    message = str(info.value)
    assert base + "blob.pth" in message
    assert str(cache / "blob.pth") in message
    assert "NAPARI_RITM_CACHE" in message and "NAPARI_RITM_WEIGHTS_URL" in message
    assert isinstance(info.value, RitmError)
    assert not (cache / "blob.pth").exists()


def test_http_404_is_not_retried(server: _Server, cache: Path, monkeypatch):
    _add_entry(monkeypatch, b"x")
    with pytest.raises(WeightsNotFoundError, match="HTTP 404"):
        weights.fetch_weights("test.blob", progress=False, base_url=server.base_url, retries=3)
    assert len(server.requests) == 1


def test_fetch_unknown_name(cache: Path):
    with pytest.raises(WeightsNotFoundError, match="unknown weights 'nope'"):
        weights.fetch_weights("nope")


# ---------------------------------------------------------------------------------------------
# Real checkpoints: load_model over HTTP, import


@pytest.fixture(scope="module")
def h18s_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not _has_model_io():
        pytest.skip("napari_ritm.model is not written yet")
    from napari_ritm.model import build_model, save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "h18s.pth"
    return save_checkpoint(build_model("hrnet18s", init="none"), path, metadata={"note": "test"})


@needs_model
def test_load_model_downloads_and_checks_architecture(
    server: _Server, cache: Path, monkeypatch, h18s_checkpoint: Path
):
    data = h18s_checkpoint.read_bytes()
    server.files["blob.pth"] = data
    _add_entry(monkeypatch, data)
    monkeypatch.setenv("NAPARI_RITM_WEIGHTS_URL", server.base_url)
    model = weights.load_model("test.blob", device="cpu", progress=False)
    assert (model.variant, model.with_prev_mask, model.training) == ("hrnet18s", True, False)
    assert model.metadata.get("note") == "test"
    assert next(model.parameters()).device.type == "cpu"
    # The same file under an entry that promises another architecture is refused.
    spec = dataclasses.replace(WEIGHTS["test.blob"], variant="hrnet18")
    monkeypatch.setitem(WEIGHTS, "test.blob", spec)
    with pytest.raises(CheckpointError, match=r"hrnet18s model.*is a hrnet18 model"):
        weights.load_model("test.blob", device="cpu", progress=False)


@needs_model
def test_import_valid_checkpoint(cache: Path, h18s_checkpoint: Path):
    target = weights.import_weights(h18s_checkpoint, "my-cells_v1")
    assert target == cache / "imported" / "my-cells_v1.pth"
    assert target.read_bytes() == h18s_checkpoint.read_bytes()
    assert weights.resolve_weights("my-cells_v1") == target
    assert weights.fetch_weights("my-cells_v1") == target
    info = {i.name: i for i in weights.list_weights()}["my-cells_v1"]
    assert (info.kind, info.variant, info.cached, info.status) == (
        "imported",
        "hrnet18s",
        True,
        "imported",
    )
    assert info.extra["sha256"] == hashlib.sha256(h18s_checkpoint.read_bytes()).hexdigest()
    with pytest.raises(weights.InvalidWeightsNameError, match="already imported"):
        weights.import_weights(h18s_checkpoint, "my-cells_v1")
    assert weights.import_weights(h18s_checkpoint, "my-cells_v1", overwrite=True) == target
    assert _leftovers(cache / "imported") == ["my-cells_v1.json", "my-cells_v1.pth"]


@needs_model
def test_import_corrupt_file_is_refused(cache: Path, tmp_path: Path, h18s_checkpoint: Path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(h18s_checkpoint.read_bytes()[:100_000])  # truncated
    with pytest.raises(CheckpointError, match="refusing to import"):
        weights.import_weights(bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError):
        weights.import_weights(junk)
    assert not (cache / "imported" / "broken.pth").exists()
    assert _leftovers(cache / "imported") == []


def test_import_name_checks(cache: Path, tmp_path: Path):
    ckpt = tmp_path / "a.pth"
    ckpt.write_bytes(b"x")
    with pytest.raises(weights.InvalidWeightsNameError, match="belongs to the registry"):
        weights.import_weights(ckpt, "hrnet18s")
    with pytest.raises(weights.InvalidWeightsNameError, match="invalid weights name"):
        weights.import_weights(ckpt, "../escape")
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        weights.import_weights(tmp_path / "missing.pth")


# ---------------------------------------------------------------------------------------------
# CLI


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="napari-ritm")
    weights.register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_list_and_fetch(server: _Server, cache: Path, monkeypatch, capsys):
    data = b"cli bytes" * 50
    server.files["blob.pth"] = data
    _add_entry(monkeypatch, data)
    assert _cli(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert str(cache) in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "not downloaded" in lines["hrnet18s.cocolvis_itermask"]
    assert "shipped" in lines[weights.DEFAULT_MODEL]  # "shipped" or "not shipped yet"
    assert "test.blob" in lines
    assert _cli(["weights", "fetch", "test.blob", "--quiet", "--base-url", server.base_url]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "blob.pth")
    assert _cli(["weights", "list"]) == 0
    assert (
        "cached"
        in {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}[
            "test.blob"
        ]
    )


@needs_model
def test_cli_import(cache: Path, h18s_checkpoint: Path, tmp_path: Path, capsys):
    assert _cli(["weights", "import", str(h18s_checkpoint), "--name", "cli-model"]) == 0
    assert "cli-model" in capsys.readouterr().out
    assert (cache / "imported" / "cli-model.pth").is_file()
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"junk")
    with pytest.raises(CheckpointError):
        _cli(["weights", "import", str(junk)])
