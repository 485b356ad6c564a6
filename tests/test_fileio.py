"""Atomic writes, disk-full errors and JSON cleaning (napari_ritm.fileio) and the tqdm adapter."""

from __future__ import annotations

import errno
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_ritm.errors import RitmError
from napari_ritm.fileio import atomic_write, disk_error, to_jsonable, write_text_atomic
from napari_ritm.progress import TqdmProgress


def test_write_text_atomic_replaces_and_leaves_no_temp(tmp_path: Path):
    target = tmp_path / "sub" / "config.json"
    assert write_text_atomic(target, "one\n") == target
    write_text_atomic(target, "two\n")
    assert target.read_text(encoding="utf-8") == "two\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["config.json"]


def test_atomic_write_keeps_suffix_for_format_sniffing_writers(tmp_path: Path):
    seen: list[Path] = []

    def writer(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_bytes(b"png")

    atomic_write(tmp_path / "curves.png", writer)
    assert seen[0].parent == tmp_path and seen[0].suffix == ".png"
    assert seen[0] != tmp_path / "curves.png"
    assert (tmp_path / "curves.png").read_bytes() == b"png"


def test_failed_writer_keeps_old_file_and_removes_temp(tmp_path: Path):
    target = tmp_path / "last.pth"
    target.write_bytes(b"old")

    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise ValueError("bug in the writer")

    with pytest.raises(ValueError, match="bug in the writer"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_full_disk_becomes_ritm_error_with_sizes_and_advice(tmp_path: Path):
    target = tmp_path / "resume.pth"

    def full(tmp: Path) -> None:
        tmp.write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(RitmError) as info:
        atomic_write(target, full, needed_bytes=300 * 2**20, advice="free space, then --resume")
    text = str(info.value)
    assert text.startswith(f"no space left on the device while writing {target} (")
    assert "MiB free; it needs about 300 MiB); free space, then --resume" in text
    assert isinstance(info.value.__cause__, OSError)
    assert list(tmp_path.iterdir()) == []


def test_other_os_errors_quote_the_reason(tmp_path: Path):
    err = disk_error(tmp_path / "a.txt", OSError(errno.EACCES, "Permission denied"))
    assert str(err) == f"could not write {tmp_path / 'a.txt'}: Permission denied"


def test_to_jsonable_values():
    value = {
        "nan": float("nan"),
        "inf": np.float32(np.inf),
        "f": np.float64(0.5),
        "i": np.int64(3),
        "b": np.bool_(True),
        "t": (1, (2, 3)),
        "p": Path("/a/b"),
        "arr": np.array([1.0, np.nan]),
        5: "key",
        "none": None,
    }
    out = to_jsonable(value)
    assert out == {
        "nan": None,
        "inf": None,
        "f": 0.5,
        "i": 3,
        "b": True,
        "t": [1, [2, 3]],
        "p": "/a/b",
        "arr": [1.0, None],
        "5": "key",
        "none": None,
    }
    assert type(out["i"]) is int and type(out["b"]) is bool and type(out["f"]) is float
    json.dumps(out, allow_nan=False)  # strict JSON
    assert math.isnan(value["nan"])  # the input is not changed


def test_to_jsonable_plain_str_subclass():
    class Version(str):
        pass

    assert type(to_jsonable(Version("2.1"))) is str


def test_fileio_and_progress_do_not_import_torch():
    code = (
        "import sys, napari_ritm.fileio, napari_ritm.progress; "
        "print('torch' in sys.modules, 'tqdm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_tqdm_progress_initial_from_first_call_and_description():
    stream = io.StringIO()
    with TqdmProgress(unit="step", initial=None, message_as="description", file=stream) as bar:
        bar(41, 100, "epoch 3/5 step 1/20 loss 0.5 (0.1 s/step, ETA 00:05)")
        assert bar.bar.initial == 40 and bar.bar.n == 41 and bar.bar.total == 100
        assert bar.bar.desc == "epoch 3/5 step 1/20 loss 0.5"
        bar(42, 100, "epoch 3/5 step 2/20 loss 0.4 (0.1 s/step, ETA 00:05)")
        assert bar.bar.n == 42
    assert bar.bar is None  # closed by the with block
    assert "step" in stream.getvalue()


def test_tqdm_progress_postfix_and_unknown_total():
    stream = io.StringIO()
    with TqdmProgress(unit="obj", desc="model on data", file=stream) as bar:
        bar(2, 0, "img_1")
        assert bar.bar.total is None and bar.bar.initial == 0
        assert bar.bar.desc.startswith("model on data") and bar.bar.postfix == "img_1"
