"""Weights: registry, shipped record, pooch downloads against a local HTTP server, verification,
quarantine, import with a recorded hash, CLI."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.server
import json
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from napari_ritm import weights
from napari_ritm.cli import main as cli_main
from napari_ritm.errors import CheckpointError, RitmError, WeightsNotFoundError
from napari_ritm.weights import WEIGHTS, CorruptWeightsError, WeightsSpec
from napari_ritm.weights import registry as registry_module
from napari_ritm.weights.shipping import describe_training, shipped_record

OFFICIAL_BASE = "https://github.com/saic-vul/ritm_interactive_segmentation/releases/download/v1.0/"
SHIPPED = registry_module.CHECKPOINT_DIR / "cells_hrnet18s.pth"  # the default model
HTML = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>proxy</body></html>\n"


# ---------------------------------------------------------------------------------------------
# A small HTTP server on 127.0.0.1 that serves byte strings and can cut a connection once.


class _Server:
    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        self.requests: list[str] = []
        self.drop_after: int | None = None  # close the connection after this many body bytes
        state = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10  # a stuck client cannot hold a handler thread for long

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                state.requests.append(self.path)
                entry = state.files.get(self.path.lstrip("/"))
                if entry is None:
                    self.send_error(404)
                    return
                body, content_type = entry
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if state.drop_after is not None:
                    cut, state.drop_after = state.drop_after, None  # misbehave once
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

    def serve(self, name: str, body: bytes, content_type: str = "application/octet-stream"):
        self.files[name] = (body, content_type)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


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


@pytest.fixture(scope="module")
def ckpt_bytes(tiny_checkpoint: Path) -> bytes:
    """A real hrnet18s ITER-M checkpoint (seeded random weights, made by conftest)."""
    return tiny_checkpoint.read_bytes()


def _add_entry(monkeypatch: pytest.MonkeyPatch, sha_of: bytes | None, **changes) -> WeightsSpec:
    """Register 'test.blob' (file blob.pth), with the sha256 of ``sha_of`` or no hash (like the
    official files)."""
    fields = {
        "name": "test.blob",
        "file_name": "blob.pth",
        "variant": "hrnet18s",
        "with_prev_mask": True,
        "train_data": "none",
        "description": "test entry",
        "sha256": hashlib.sha256(sha_of).hexdigest() if sha_of is not None else None,
        "aliases": ("blob-alias",),
    }
    fields.update(changes)
    spec = WeightsSpec(**fields)
    monkeypatch.setitem(WEIGHTS, spec.name, spec)
    return spec


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _fetch(server: _Server, **kwargs) -> Path:
    return weights.fetch_weights(
        "test.blob", progress=False, base_url=server.base_url, timeout=10, **kwargs
    )


def _assert_refusal(message: str, server: _Server, cache: Path, what: str) -> None:
    """One line naming the URL, what is wrong, the command to run and the manual path."""
    assert "\n" not in message
    assert server.base_url + "blob.pth" in message
    assert what in message
    assert "napari-ritm weights fetch test.blob" in message
    assert f"save it as {cache / 'blob.pth'}" in message


# ---------------------------------------------------------------------------------------------
# Registry and name resolution


def test_registry_has_the_five_official_files():
    official = {s.file_name: s for s in WEIGHTS.values() if s.kind == "official"}
    expect = {  # file -> (variant, with_prev_mask, train data), ritm-reference §1.2
        "sbd_h18_itermask.pth": ("hrnet18", True, "SBD"),
        "coco_lvis_h18_baseline.pth": ("hrnet18", False, "COCO+LVIS"),
        "coco_lvis_h18s_itermask.pth": ("hrnet18s", True, "COCO+LVIS"),
        "coco_lvis_h18_itermask.pth": ("hrnet18", True, "COCO+LVIS"),
        "coco_lvis_h32_itermask.pth": ("hrnet32", True, "COCO+LVIS"),
    }
    assert set(official) == set(expect)
    for file_name, spec in official.items():
        assert (spec.variant, spec.with_prev_mask, spec.train_data) == expect[file_name]
        assert (spec.sha256, spec.size_bytes) == (None, None)  # nothing published
        assert spec.verified_by == "strict load"
        assert spec.license == "MIT"
    assert official["coco_lvis_h18s_itermask.pth"].name == "hrnet18s.cocolvis_itermask"


def test_every_registry_entry_says_what_it_is_for():
    for spec in WEIGHTS.values():  # one line, shown under the dock's model choice
        assert spec.use_for and "\n" not in spec.use_for and len(spec.use_for) <= 70, spec.name
    assert WEIGHTS["napari-ritm.nuclei"].use_for.startswith("fluorescence nuclei")
    assert {i.name: i.use_for for i in weights.list_weights()}["hrnet18s.cocolvis_itermask"] == (
        WEIGHTS["hrnet18s.cocolvis_itermask"].use_for
    )


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
        ("default", "napari-ritm.cells"),
        ("cells", "napari-ritm.cells"),
        ("nuclei", "napari-ritm.nuclei"),
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
    # A cached official file resolves without any network access (its load checks it).
    cache.mkdir(parents=True)
    (cache / "coco_lvis_h18_itermask.pth").write_bytes(b"y")
    assert weights.resolve_weights("hrnet18") == cache / "coco_lvis_h18_itermask.pth"
    with pytest.raises(WeightsNotFoundError, match=r"weights fetch hrnet32\.cocolvis_itermask"):
        weights.resolve_weights("hrnet32", download=False)


def test_list_weights_reports_cache_state_and_verification(cache: Path):
    infos = {i.name: i for i in weights.list_weights()}
    assert set(infos) == set(WEIGHTS)
    h18s = infos["hrnet18s.cocolvis_itermask"]
    assert (h18s.kind, h18s.variant, h18s.cached, h18s.status, h18s.verified_by) == (
        "official",
        "hrnet18s",
        False,
        "not downloaded",
        "strict load",
    )
    assert h18s.path == cache / "coco_lvis_h18s_itermask.pth"
    assert h18s.url == OFFICIAL_BASE + "coco_lvis_h18s_itermask.pth"
    default = infos[weights.DEFAULT_MODEL]
    assert (default.kind, default.cached, default.status, default.verified_by) == (
        "shipped",
        True,
        "shipped",
        "sha256",
    )
    cache.mkdir()
    h18s.path.write_bytes(b"x")
    again = {i.name: i for i in weights.list_weights()}["hrnet18s.cocolvis_itermask"]
    assert (again.cached, again.status) == (True, "cached")


# ---------------------------------------------------------------------------------------------
# The shipped default model and its record


@pytest.mark.parametrize(
    ("name", "origin"),
    [
        # v1 was trained from scratch on microscopy (its metadata says so), not COCO+LVIS
        ("napari-ritm.nuclei", "trained from scratch"),
        # the default (v4; v2 before it) continued from v1 on microscopy and photographs
        ("napari-ritm.cells", "fine-tuned from napari-ritm.nuclei with napari-ritm-finetune"),
    ],
)
def test_shipped_record_agrees_with_the_checkpoint(name: str, origin: str):
    spec = WEIGHTS[name]
    checkpoint = registry_module.CHECKPOINT_DIR / spec.file_name
    record = json.loads(checkpoint.with_suffix(".json").read_text())
    assert record["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert record["size_bytes"] == checkpoint.stat().st_size
    # Regenerated from the checkpoint (its metadata, its bytes), the record is the same.
    assert shipped_record(checkpoint) == record
    assert (spec.sha256, spec.size_bytes) == (record["sha256"], record["size_bytes"])
    assert (spec.variant, spec.with_prev_mask) == (record["variant"], record["with_prev_mask"])
    assert (spec.train_data, spec.description) == (record["train_data"], record["description"])
    assert origin in spec.description
    assert "COCO" not in spec.description + spec.train_data
    assert "synthetic" in spec.train_data


def test_describe_training_from_metadata():
    scratch = {
        "kind": "napari-ritm-finetune",
        "init": "runs/a/last.pth",
        "training": {"iterations": 300, "stages": [{"init": "scratch (Xavier)"}, {"init": "x"}]},
        "data": {
            "train": [
                {"name": "A", "source": "data/microscopy/A", "n_objects": 10},
                {"name": "B", "source": "data/microscopy/B", "n_objects": 1200},
            ],
            "synthetic": {"n_images": 40},
            "synthetic_fraction": 0.25,
        },
    }
    assert describe_training(scratch, "hrnet18s", True) == (
        "2 microscopy data sets (A, B; 1,210 objects) + 40 synthetic cell-like images "
        "(25% of the samples)",
        "HRNet18s+OCR ITER-M, trained from scratch with napari-ritm-finetune "
        "(300 iterations in 2 stages); ships with the package",
    )
    tuned = {"init": "/w/coco_lvis_h18_itermask.pth", "iteration": 50, "data": {"train": []}}
    assert describe_training(tuned, "hrnet18", True) == (
        "unrecorded (the data record lists no set)",
        "HRNet18+OCR ITER-M, fine-tuned from hrnet18.cocolvis_itermask (COCO+LVIS) "
        "(50 iterations); ships with the package",
    )


def test_default_model_resolves_to_the_verified_shipped_file(cache: Path):
    assert weights.resolve_weights(None) == SHIPPED
    assert weights.resolve_weights("default", download=False) == SHIPPED
    assert weights.fetch_weights(weights.DEFAULT_MODEL) == SHIPPED
    assert not cache.exists()  # nothing downloaded, nothing written


def test_damaged_or_missing_shipped_file_is_refused(cache: Path, tmp_path: Path, monkeypatch):
    fake_dir = tmp_path / "checkpoints"
    fake_dir.mkdir()
    monkeypatch.setattr(registry_module, "CHECKPOINT_DIR", fake_dir)
    with pytest.raises(WeightsNotFoundError, match="missing from this installation") as info:
        weights.resolve_weights(None)
    assert "hrnet18s" in str(info.value) and str(fake_dir / SHIPPED.name) in str(info.value)
    damaged = bytearray(SHIPPED.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (fake_dir / SHIPPED.name).write_bytes(bytes(damaged))
    with pytest.raises(CorruptWeightsError, match=r"has sha256 .*reinstall napari-ritm"):
        weights.resolve_weights(weights.DEFAULT_MODEL)
    assert (fake_dir / SHIPPED.name).is_file()  # a package file is never moved
    assert not (cache / "quarantine").exists()
    spec = dataclasses.replace(WEIGHTS[weights.DEFAULT_MODEL], sha256=None, size_bytes=None)
    monkeypatch.setitem(WEIGHTS, spec.name, spec)
    with pytest.raises(CorruptWeightsError, match="no hash record"):
        weights.load_model(None, device="cpu")


# ---------------------------------------------------------------------------------------------
# Downloads: one good file, and each way a file can be bad


def test_good_download_without_hash_is_checked_by_strict_load(
    server: _Server, cache: Path, monkeypatch, ckpt_bytes: bytes
):
    server.serve("blob.pth", ckpt_bytes)
    _add_entry(monkeypatch, None)  # like the official files: no published hash
    monkeypatch.setenv("NAPARI_RITM_WEIGHTS_URL", server.base_url)
    seen: list[tuple[int, int, str]] = []
    path = weights.fetch_weights("blob-alias", progress=lambda d, t, m: seen.append((d, t, m)))
    assert path == cache / "blob.pth"
    assert path.read_bytes() == ckpt_bytes
    assert _leftovers(cache) == ["blob.pth"]  # no temporary, staging or .part file
    assert seen[-1] == (len(ckpt_bytes), len(ckpt_bytes), "downloading blob.pth")
    assert [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)
    model = weights.load_model("test.blob", device="cpu")
    assert (model.variant, model.with_prev_mask, model.training) == ("hrnet18s", True, False)
    assert model.metadata["note"] == "test fixture, random weights"
    assert server.requests == ["/blob.pth"]  # loading used the cache


def test_good_download_with_hash(server: _Server, cache: Path, monkeypatch):
    data = bytes(range(256)) * 1000
    server.serve("sub/blob.pth", data)
    _add_entry(monkeypatch, data)
    path = weights.fetch_weights("test.blob", progress=False, base_url=server.base_url + "sub")
    assert path.read_bytes() == data
    assert server.requests == ["/sub/blob.pth"]
    assert weights.fetch_weights("test.blob", progress=False) == path  # cached: no request
    assert weights.resolve_weights("test.blob") == path  # hash checked again, still good
    assert len(server.requests) == 1


def test_wrong_hash_is_refused_and_the_next_fetch_downloads_again(
    server: _Server, cache: Path, monkeypatch
):
    good = b"the real file" * 1000
    bad = b"another file!" * 1000
    server.serve("blob.pth", bad)
    _add_entry(monkeypatch, good)
    with pytest.raises(CorruptWeightsError) as info:
        _fetch(server)
    _assert_refusal(str(info.value), server, cache, hashlib.sha256(bad).hexdigest())
    assert f"expected {hashlib.sha256(good).hexdigest()}" in str(info.value)
    assert _leftovers(cache) == []
    server.serve("blob.pth", good)
    assert _fetch(server).read_bytes() == good
    assert _leftovers(cache) == ["blob.pth"]


def test_html_page_is_quarantined_and_the_next_fetch_downloads_again(
    server: _Server, cache: Path, monkeypatch, ckpt_bytes: bytes
):
    server.serve("blob.pth", HTML, "text/html")
    _add_entry(monkeypatch, None)
    with pytest.raises(CorruptWeightsError) as info:
        _fetch(server)
    _assert_refusal(str(info.value), server, cache, "is not a PyTorch checkpoint but a web page")
    assert "weights_only" not in str(info.value)
    assert f"moved to {cache / 'quarantine' / 'blob.pth'}" in str(info.value)
    assert _leftovers(cache) == ["quarantine"]
    assert (cache / "quarantine" / "blob.pth").read_bytes() == HTML  # kept for a look
    server.serve("blob.pth", ckpt_bytes)
    assert _fetch(server).read_bytes() == ckpt_bytes
    assert _leftovers(cache) == ["blob.pth", "quarantine"]


@pytest.mark.parametrize(
    ("cut", "what"),
    [
        (slice(0, 100_000), "is truncated"),
        (slice(0, -1), "is truncated"),
    ],
)
def test_truncated_file_is_quarantined(
    server: _Server, cache: Path, monkeypatch, ckpt_bytes: bytes, cut: slice, what: str
):
    server.serve("blob.pth", ckpt_bytes[cut])  # a complete answer holding a partial file
    _add_entry(monkeypatch, None)
    with pytest.raises(CorruptWeightsError) as info:
        _fetch(server)
    _assert_refusal(str(info.value), server, cache, what)
    assert _leftovers(cache) == ["quarantine"]
    assert _leftovers(cache / "quarantine") == ["blob.pth"]


def test_garbage_and_wrong_architecture_are_quarantined(
    server: _Server, cache: Path, monkeypatch, ckpt_bytes: bytes
):
    server.serve("blob.pth", hashlib.sha512(b"seed").digest() * 100)
    _add_entry(monkeypatch, None)
    with pytest.raises(CorruptWeightsError) as info:
        _fetch(server)
    _assert_refusal(str(info.value), server, cache, "is not a PyTorch checkpoint (neither")
    # A real checkpoint, but not the architecture the entry promises (a wrong mirror file).
    server.serve("blob.pth", ckpt_bytes)
    _add_entry(monkeypatch, None, variant="hrnet18")
    with pytest.raises(CorruptWeightsError) as info:
        _fetch(server)
    _assert_refusal(
        str(info.value), server, cache, "holds a hrnet18s model (prev-mask input: True)"
    )
    assert (cache / "quarantine" / "blob.pth").read_bytes() == ckpt_bytes  # the latest only
    assert _leftovers(cache) == ["quarantine"]


def test_recorded_size_is_checked(server: _Server, cache: Path, monkeypatch, ckpt_bytes):
    server.serve("blob.pth", ckpt_bytes)
    _add_entry(monkeypatch, None, size_bytes=len(ckpt_bytes) + 1)
    assert WEIGHTS["test.blob"].verified_by == "size + strict load"
    with pytest.raises(CorruptWeightsError) as info:
        _fetch(server)
    _assert_refusal(str(info.value), server, cache, f"has {len(ckpt_bytes):,} bytes, expected")
    _add_entry(monkeypatch, None, size_bytes=len(ckpt_bytes))
    assert _fetch(server).stat().st_size == len(ckpt_bytes)


def test_bad_cached_file_is_quarantined_on_load_and_fetched_again(
    server: _Server, cache: Path, monkeypatch, ckpt_bytes: bytes
):
    """A file already in the cache that fails its load (saved by hand, damaged on disk)."""
    server.serve("blob.pth", ckpt_bytes)
    _add_entry(monkeypatch, None)
    monkeypatch.setenv("NAPARI_RITM_WEIGHTS_URL", server.base_url)
    cache.mkdir()
    (cache / "blob.pth").write_bytes(ckpt_bytes[:-1000])
    with pytest.raises(CorruptWeightsError) as info:
        weights.load_model("test.blob", device="cpu")
    message = str(info.value)
    assert message.startswith(f"{cache / 'blob.pth'} is truncated")
    assert "napari-ritm weights fetch test.blob" in message and "\n" not in message
    assert _leftovers(cache) == ["quarantine"]
    assert server.requests == []
    model = weights.load_model("test.blob", device="cpu", progress=False)  # downloads again
    assert model.variant == "hrnet18s" and server.requests == ["/blob.pth"]


def test_cached_file_with_wrong_hash_is_quarantined(cache: Path, monkeypatch):
    _add_entry(monkeypatch, b"expected")
    cache.mkdir()
    (cache / "blob.pth").write_bytes(b"something else")
    with pytest.raises(CorruptWeightsError, match=r"blob\.pth has sha256 .*weights fetch test"):
        weights.resolve_weights("test.blob", download=False)
    assert _leftovers(cache) == ["quarantine"]
    with pytest.raises(WeightsNotFoundError, match="not in the cache"):
        weights.resolve_weights("test.blob", download=False)


def test_old_torch_is_named_and_the_cached_file_kept(cache: Path, monkeypatch, ckpt_bytes):
    import torch

    _add_entry(monkeypatch, None)
    cache.mkdir()
    (cache / "blob.pth").write_bytes(ckpt_bytes)
    monkeypatch.setattr(torch, "__version__", "2.4.1")
    with pytest.raises(RitmError, match=r"needs torch >= 2\.5, you have 2\.4\.1") as info:
        weights.load_model("test.blob", device="cpu")
    assert not isinstance(info.value, CheckpointError)
    assert _leftovers(cache) == ["blob.pth"]  # the file is fine: not quarantined


def test_connection_cut_leaves_nothing_and_retry_downloads_again(
    server: _Server, cache: Path, monkeypatch
):
    data = hashlib.sha512(b"seed").digest() * 4000  # 256 kB
    server.serve("blob.pth", data)
    _add_entry(monkeypatch, data)
    server.drop_after = 100_000
    with pytest.raises(WeightsNotFoundError, match="broke off") as info:
        _fetch(server, retries=0)
    assert not isinstance(info.value, CorruptWeightsError)
    assert _leftovers(cache) == []
    server.drop_after = 100_000
    assert _fetch(server, retries=1).read_bytes() == data  # the second attempt starts again
    assert server.requests == ["/blob.pth"] * 3
    assert _leftovers(cache) == ["blob.pth"]


def test_tqdm_progress_bar(server: _Server, cache: Path, monkeypatch, capsys):
    data = b"p" * 300_000
    server.serve("blob.pth", data)
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
    assert "connection failed: Connection refused" in message and "offline" in message
    assert f"download {base}blob.pth with a browser and save it as {cache / 'blob.pth'}" in message
    assert "NAPARI_RITM_CACHE" in message and "NAPARI_RITM_WEIGHTS_URL" in message
    assert _leftovers(cache) == []


def test_http_404_is_not_retried(server: _Server, cache: Path, monkeypatch):
    _add_entry(monkeypatch, b"x")
    with pytest.raises(WeightsNotFoundError, match="HTTP 404"):
        _fetch(server, retries=3)
    assert server.requests == ["/blob.pth"]
    assert _leftovers(cache) == []


def test_fetch_unknown_name(cache: Path):
    with pytest.raises(WeightsNotFoundError, match="unknown weights 'nope'"):
        weights.fetch_weights("nope")


# ---------------------------------------------------------------------------------------------
# Import: validated, copied, hash recorded and checked on every load


def test_import_records_the_hash_and_loads_by_name(cache: Path, tiny_checkpoint: Path):
    target = weights.import_weights(tiny_checkpoint, "my-cells_v1")
    assert target == cache / "imported" / "my-cells_v1.pth"
    assert target.read_bytes() == tiny_checkpoint.read_bytes()
    record = json.loads(target.with_suffix(".json").read_text())
    assert record["sha256"] == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert (record["variant"], record["with_prev_mask"]) == ("hrnet18s", True)
    assert record["source"] == str(tiny_checkpoint.resolve())
    assert weights.resolve_weights("my-cells_v1") == target
    assert weights.fetch_weights("my-cells_v1") == target
    assert weights.load_model("my-cells_v1", device="cpu").variant == "hrnet18s"
    info = {i.name: i for i in weights.list_weights()}["my-cells_v1"]
    assert (info.kind, info.variant, info.status, info.verified_by) == (
        "imported",
        "hrnet18s",
        "imported",
        "sha256",
    )
    with pytest.raises(weights.InvalidWeightsNameError, match="already imported"):
        weights.import_weights(tiny_checkpoint, "my-cells_v1")
    assert info.description == f"imported from {tiny_checkpoint.resolve()}"
    assert weights.import_weights(tiny_checkpoint, "my-cells_v1", overwrite=True) == target
    assert _leftovers(cache / "imported") == ["my-cells_v1.json", "my-cells_v1.pth"]
    # a description given at import (what a fine-tune registers) is what the list shows
    weights.import_weights(
        tiny_checkpoint, "my-cells_v1", overwrite=True, description="fine-tuned from x\n on y"
    )
    info = {i.name: i for i in weights.list_weights()}["my-cells_v1"]
    assert info.description == "fine-tuned from x on y"


def test_imported_file_that_changed_is_refused(cache: Path, tiny_checkpoint: Path):
    target = weights.import_weights(tiny_checkpoint, "changed")
    with open(target, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(CorruptWeightsError) as info:
        weights.load_model("changed", device="cpu")
    message = str(info.value)
    assert "'changed' changed since they were imported" in message
    assert f"napari-ritm weights import {tiny_checkpoint.resolve()} --name changed --force" in (
        message
    )
    assert target.is_file()  # the user's file is left alone
    target.with_suffix(".json").unlink()
    with pytest.raises(CorruptWeightsError, match="no record of their sha256"):
        weights.resolve_weights("changed")
    info_row = {i.name: i for i in weights.list_weights()}["changed"]
    assert info_row.verified_by == "no record"


def test_import_refuses_bad_files_in_one_line(cache: Path, tmp_path: Path, ckpt_bytes: bytes):
    cases = {
        "random_bytes.bin": (hashlib.sha512(b"r").digest() * 64, "is not a PyTorch checkpoint"),
        "page.pth": (HTML, "is not a PyTorch checkpoint but a web page"),
        "broken.pth": (ckpt_bytes[:100_000], "is truncated"),
    }
    for file_name, (data, what) in cases.items():
        bad = tmp_path / file_name
        bad.write_bytes(data)
        with pytest.raises(CheckpointError) as info:
            weights.import_weights(bad)
        message = str(info.value)
        assert message.startswith(f"refusing to import {bad}: the file {what}")
        assert "\n" not in message and "weights_only" not in message
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


def _rows(out: str) -> dict[str, list[str]]:
    """Table rows of `weights list` by name, split on runs of 2+ spaces."""
    import re

    rows = {}
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) >= 4:
            rows[cells[0]] = cells
    return rows


def test_cli_list_and_fetch(server: _Server, cache: Path, monkeypatch, capsys):
    data = b"cli bytes" * 50
    server.serve("blob.pth", data)
    _add_entry(monkeypatch, data)
    assert _cli(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert str(cache) in out
    rows = _rows(out)
    assert rows["NAME"][:4] == ["NAME", "VARIANT", "STATUS", "VERIFIED"]
    assert rows["hrnet18s.cocolvis_itermask"][1:4] == ["hrnet18s", "not downloaded", "strict load"]
    assert rows[weights.DEFAULT_MODEL][1:4] == ["hrnet18s", "shipped", "sha256"]
    assert rows["test.blob"][2:4] == ["not downloaded", "sha256"]
    assert "strict load: no published hash (official RITM release)" in out
    assert _cli(["weights", "fetch", "test.blob", "--quiet", "--base-url", server.base_url]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "blob.pth")
    assert _cli(["weights", "list", "--details"]) == 0
    out = capsys.readouterr().out
    assert _rows(out)["test.blob"][2] == "cached"
    assert f"    {WEIGHTS[weights.DEFAULT_MODEL].description}" in out.splitlines()
    assert f"    for: {WEIGHTS[weights.DEFAULT_MODEL].use_for}" in out.splitlines()


def test_cli_import(cache: Path, tiny_checkpoint: Path, tmp_path: Path, capsys):
    assert cli_main(["weights", "import", str(tiny_checkpoint), "--name", "cli-model"]) == 0
    assert "imported as 'cli-model'" in capsys.readouterr().out
    assert (cache / "imported" / "cli-model.pth").is_file()
    junk = tmp_path / "random_bytes.bin"
    junk.write_bytes(hashlib.sha256(b"junk").digest() * 100)
    assert cli_main(["weights", "import", str(junk)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "is not a PyTorch checkpoint" in err and "weights_only" not in err


def test_write_shipped_record_writes_beside_the_checkpoint(tmp_path: Path):
    """What scripts/ship_default_model.py calls after saving a model."""
    copy = tmp_path / "copy.pth"
    shutil.copyfile(SHIPPED, copy)
    from napari_ritm.weights.shipping import write_shipped_record

    record_path = write_shipped_record(copy)
    assert record_path == tmp_path / "copy.json"
    record = json.loads(record_path.read_text())
    assert record["file"] == "copy.pth"
    assert record["sha256"] == json.loads(SHIPPED.with_suffix(".json").read_text())["sha256"]
