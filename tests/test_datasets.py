"""Data set readers: layouts, encodings, instance counts, errors (shared data, temp folders)."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from napari_ritm.errors import DatasetError, ImageReadError
from napari_ritm.evaluation.datasets import (
    Dataset,
    Sample,
    encode_benchmark_mask,
    load_dataset,
    read_image,
    read_mask,
)

MIN_AREA = 50


def _dataset_dirs(root: Path) -> list[Path]:
    """Every folder under shared/data that looks like a data set (never a hard-coded name)."""
    found = []
    for d in sorted(p for p in root.rglob("*") if p.is_dir()):
        has_csv = (d / "pairs.csv").is_file()
        has_dirs = (d / "images").is_dir() and ((d / "masks").is_dir() or (d / "labels").is_dir())
        if has_csv or has_dirs:
            found.append(d)
    return found


def _pairs(d: Path) -> tuple[str, list[tuple[Path, Path]]]:
    """Independent reading of the pairing: (kind, [(image, target)])."""
    csv_path = d / "pairs.csv"
    if csv_path.is_file():
        lines = csv_path.read_text().strip().splitlines()
        header = [h.strip() for h in lines[0].split(",")]
        rows = [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]
        col = "label" if "label" in header else "mask"
        return ("labels" if col == "label" else "masks"), [
            (d / r["image"], d / r[col]) for r in rows
        ]
    targets = {
        p.stem: p for p in (d / ("labels" if (d / "labels").is_dir() else "masks")).iterdir()
    }
    kind = "labels" if (d / "labels").is_dir() else "benchmark"
    return kind, [(p, targets[p.stem]) for p in sorted((d / "images").iterdir())]


def _read_target(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        return tifffile.imread(path)
    return np.asarray(Image.open(path))


def _expected_count(kind: str, target: np.ndarray) -> int:
    planes = target[None] if target.ndim == 2 else target
    n = 0
    for plane in planes:
        if kind == "masks" and len(np.unique(plane[plane > 0])) <= 1:
            plane = ndimage.label(plane > 0, structure=np.ones((3, 3)))[0]
        _, counts = np.unique(plane[plane > 0], return_counts=True)
        n += int((counts >= MIN_AREA).sum())
    return n


@pytest.fixture(scope="module")
def shared_datasets(shared_data_dir: Path) -> list[Path]:
    dirs = _dataset_dirs(shared_data_dir)
    if not dirs:
        pytest.skip(f"no data set folders under {shared_data_dir}")
    return dirs


def _spot_check(ds: Dataset, n: int = 3) -> list[Sample]:
    """Read the first, the last and a middle sample and check the Sample contract."""
    idx = sorted({0, len(ds) // 2, len(ds) - 1})[:n]
    samples = [ds[i] for i in idx]
    for s in samples:
        assert s.gt.dtype == np.int8
        assert s.gt.ndim == 2
        assert s.image.shape[:2] == s.gt.shape
        assert s.image.ndim in (2, 3)
        assert set(np.unique(s.gt)) <= {-1, 0, 1}
        assert (s.gt == 1).any()
    return samples


def test_shared_datasets_sample_counts_and_values(shared_datasets: list[Path]) -> None:
    for d in shared_datasets:
        kind, pairs = _pairs(d)
        ds = load_dataset(d, min_area=MIN_AREA)
        assert ds.name == d.name
        if kind == "benchmark":
            assert ds.kind == "benchmark"
            assert len(ds) == len(pairs), d
        else:
            assert ds.kind == kind, d
            expected = sum(_expected_count(kind, _read_target(t)) for _, t in pairs)
            assert len(ds) == expected, d
        assert len(set(ds.names)) == len(ds), f"duplicate sample names in {d}"
        samples = _spot_check(ds)
        if kind != "benchmark":
            file_dtype = read_image(pairs[0][0]).dtype
            assert samples[0].image.dtype == file_dtype, d  # uint16 stays uint16
        else:
            assert samples[0].image.dtype == np.uint8 and samples[0].image.shape[2] == 3


def test_shared_benchmark_ignore_band(shared_datasets: list[Path]) -> None:
    benchmarks = [d for d in shared_datasets if _pairs(d)[0] == "benchmark"]
    if not benchmarks:
        pytest.skip("no benchmark-layout data set in shared data")
    n_band = n_plain = 0
    for d in benchmarks:
        ds = load_dataset(d)
        by_name = dict(zip(ds.names, range(len(ds)), strict=True))
        for image_path, mask_path in _pairs(d)[1]:
            mask = _read_target(mask_path)
            mask = mask.max(axis=2) if mask.ndim == 3 else mask
            values = set(np.unique(mask).tolist())
            if values <= {0, 128, 255} and 128 in values and 255 in values:
                gt = ds[by_name[image_path.stem]].gt
                np.testing.assert_array_equal(gt == -1, mask == 128)
                np.testing.assert_array_equal(gt == 1, mask == 255)
                n_band += 1
            elif n_plain < 3 and values == {0, 255}:  # a few plain 0/255 masks: no ignore
                gt = ds[by_name[image_path.stem]].gt
                assert not (gt == -1).any()
                np.testing.assert_array_equal(gt == 1, mask == 255)
                n_plain += 1
    if n_band == 0:
        pytest.skip("no mask with a 128 ignore band in the shared benchmarks")


def test_shared_stack_yields_2d_planes(shared_datasets: list[Path]) -> None:
    stacks = [
        d
        for d in shared_datasets
        if _pairs(d)[0] != "benchmark" and _read_target(_pairs(d)[1][0][1]).ndim == 3
    ]
    if not stacks:
        pytest.skip("no 3D label stack in shared data")
    ds = load_dataset(stacks[0], max_samples=2, seed=3)
    assert ":z" in ds.names[0]
    sample = ds[0]
    assert sample.image.ndim == 2
    # cap per plane, seeded
    planes = [n.rsplit(":", 1)[0] for n in ds.names]
    assert max(planes.count(p) for p in set(planes)) <= 2
    assert load_dataset(stacks[0], max_samples=2, seed=3).names == ds.names


# --- synthetic folders -----------------------------------------------------------------------


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".tif", ".tiff"):
        tifffile.imwrite(path, array, photometric="minisblack")
    else:
        ok, buf = cv2.imencode(path.suffix, array)
        assert ok
        buf.tofile(path)


def _benchmark(tmp_path: Path) -> Path:
    root = tmp_path / "bench"
    rng = np.random.default_rng(0)
    for i, (img_ext, mask_ext) in enumerate([(".JPG", ".bmp"), (".png", ".png")]):
        img = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
        mask = np.zeros((30, 40), np.uint8)
        mask[5:20, 5:25] = 255
        if i == 0:
            mask[4, 5:25] = 128  # GrabCut-style ignore band
        _write(root / "images" / f"img {i}{img_ext}", img)
        _write(root / "masks" / f"img {i}{mask_ext}", mask)
    (root / "images" / ".DS_Store").write_bytes(b"junk")
    (root / "images" / "notes.txt").write_text("not an image")
    return root


def test_benchmark_layout_names_with_spaces_and_encodings(tmp_path: Path) -> None:
    ds = load_dataset(_benchmark(tmp_path))
    assert ds.kind == "benchmark" and len(ds) == 2
    assert ds.names == ["img 0", "img 1"]
    s0, s1 = list(ds)
    assert s0.image.shape == (30, 40, 3) and s0.image.dtype == np.uint8
    assert (s0.gt == -1).sum() == 20 and (s0.gt == 1).sum() == 15 * 20
    assert not (s1.gt == -1).any()


def test_encode_benchmark_mask() -> None:
    grabcut = np.array([[0, 128, 255]], np.uint8)
    np.testing.assert_array_equal(encode_benchmark_mask(grabcut), [[0, -1, 1]])
    binary01 = np.array([[0, 1, 1]], np.uint8)  # 0/1 masks: non-zero is object
    np.testing.assert_array_equal(encode_benchmark_mask(binary01), [[0, 1, 1]])
    palette = np.array([[0, 1, 2, 4]], np.uint8)  # DAVIS palette parts are merged
    np.testing.assert_array_equal(encode_benchmark_mask(palette), [[0, 1, 1, 1]])
    colour = np.zeros((1, 2, 3), np.uint8)
    colour[0, 1, 2] = 200
    np.testing.assert_array_equal(encode_benchmark_mask(colour), [[0, 1]])
    assert encode_benchmark_mask(grabcut).dtype == np.int8


def test_benchmark_skips_empty_masks(tmp_path: Path) -> None:
    root = _benchmark(tmp_path)
    _write(root / "images" / "empty.png", np.zeros((30, 40, 3), np.uint8))
    _write(root / "masks" / "empty.png", np.zeros((30, 40), np.uint8))
    assert load_dataset(root).names == ["img 0", "img 1"]


def test_empty_and_unknown_folders(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a data set folder"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        load_dataset(tmp_path)


def test_missing_pair(tmp_path: Path) -> None:
    root = _benchmark(tmp_path)
    (root / "masks" / "img 1.png").unlink()
    with pytest.raises(DatasetError, match="without a mask"):
        load_dataset(root)


def test_shape_mismatch(tmp_path: Path) -> None:
    root = _benchmark(tmp_path)
    _write(root / "masks" / "img 1.png", np.full((31, 40), 255, np.uint8))
    ds = load_dataset(root)
    with pytest.raises(DatasetError, match="shape"):
        list(ds)


def test_pairs_csv_semantic_masks_to_components(tmp_path: Path) -> None:
    root = tmp_path / "semantic"
    image = np.full((40, 50), 1000, np.uint16)  # uint16 PNG keeps its dtype
    mask = np.zeros((40, 50), np.uint8)
    mask[2:12, 2:12] = 255  # 100 px
    mask[20:30, 30:45] = 255  # 150 px
    mask[35:37, 2:4] = 255  # 4 px: below min_area
    _write(root / "img" / "cell a.png", image)
    _write(root / "gt" / "a.png", mask)
    (root / "pairs.csv").write_text("image,mask\nimg/cell a.png,gt/a.png\n")
    ds = load_dataset(root, min_area=10)
    assert ds.kind == "masks" and len(ds) == 2
    areas = sorted(int((s.gt == 1).sum()) for s in ds)
    assert areas == [100, 150]
    assert ds[0].image.dtype == np.uint16
    assert len(load_dataset(root, min_area=1)) == 3


def test_pairs_csv_errors(tmp_path: Path) -> None:
    root = tmp_path / "csv"
    root.mkdir()
    (root / "pairs.csv").write_text("image,label\nimages/a.tif,labels/a.tif\n")
    with pytest.raises(DatasetError, match="file not found"):
        load_dataset(root)
    (root / "pairs.csv").write_text("img,lbl\na,b\n")
    with pytest.raises(DatasetError, match="header"):
        load_dataset(root)
    (root / "pairs.csv").write_text("image,label\n")
    with pytest.raises(DatasetError, match="no image pairs"):
        load_dataset(root)


def test_label_stack_instances_per_plane(tmp_path: Path) -> None:
    root = tmp_path / "stack"
    labels = np.zeros((3, 32, 32), np.uint16)
    labels[0, 2:12, 2:12] = 7  # 100 px
    labels[0, 20:30, 20:30] = 9
    labels[1, 2:12, 2:12] = 7
    labels[2, 0:3, 0:3] = 4  # 9 px, too small
    image = np.arange(3 * 32 * 32, dtype=np.uint16).reshape(3, 32, 32)
    _write(root / "images" / "vol.tif", image)
    _write(root / "labels" / "vol.tif", labels)
    ds = load_dataset(root, min_area=20)
    assert ds.kind == "labels"
    assert ds.names == ["vol:z0:7", "vol:z0:9", "vol:z1:7"]
    s = ds[2]
    np.testing.assert_array_equal(s.image, image[1])
    np.testing.assert_array_equal(s.gt, (labels[1] == 7).astype(np.int8))
    # samples of one plane share one image array (evaluation can reuse it)
    assert ds[0].image is ds[1].image
    capped = load_dataset(root, min_area=20, max_samples=1, seed=0)
    assert [n.split(":")[1] for n in capped.names] == ["z0", "z1"]
    assert len(load_dataset(root, min_area=20, limit=2)) == 2
    with pytest.raises(DatasetError, match="no samples"):
        load_dataset(root, min_area=10_000)


def test_stack_shape_mismatch_and_channels(tmp_path: Path) -> None:
    root = tmp_path / "ch"
    labels = np.zeros((16, 16), np.uint16)
    labels[4:12, 4:12] = 1
    _write(root / "images" / "a.tif", np.zeros((2, 16, 16), np.uint16))  # channels first
    _write(root / "labels" / "a.tif", labels)
    sample = load_dataset(root, min_area=1)[0]
    assert sample.image.shape == (16, 16, 2)
    _write(root / "images" / "a.tif", np.zeros((16, 17), np.uint16))
    with pytest.raises(DatasetError, match="shape"):
        load_dataset(root, min_area=1)[0]


def test_read_mask_keeps_palette_indices(tmp_path: Path) -> None:
    arr = np.array([[0, 1], [2, 3]], np.uint8)
    img = Image.fromarray(arr, mode="P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    img.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), arr)
    with pytest.raises(DatasetError):
        read_mask(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError):
        read_image(tmp_path / "bad.png")


# -- bad files: one ImageReadError line naming the file, the problem and the fix --------------
def _good_tiff(path: Path) -> bytes:
    rng = np.random.default_rng(0)
    tifffile.imwrite(path, rng.integers(0, 65535, (512, 512), dtype=np.uint16))
    return path.read_bytes()


def _good_png(path: Path) -> bytes:
    rng = np.random.default_rng(1)
    cv2.imwrite(str(path), rng.integers(0, 255, (256, 256), dtype=np.uint8))
    return path.read_bytes()


READERS = {"image": read_image, "mask/label": read_mask}


def _read_error(reader: str, path: Path, capfd: pytest.CaptureFixture[str]) -> str:
    """Read ``path`` with the given reader; return the one-line message. Nothing may be printed
    by the libraries and no warning may escape."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ImageReadError) as err:
            READERS[reader](path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"cannot read {reader} {path}: ")
    assert seen == []
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    return message


@pytest.mark.parametrize("reader", sorted(READERS))
def test_truncated_tiff(tmp_path: Path, reader: str, capfd) -> None:
    data = _good_tiff(tmp_path / "whole.tif")
    bad = tmp_path / "cut short.tif"
    bad.write_bytes(data[:20_000])
    message = _read_error(reader, bad, capfd)
    assert "the TIFF file is truncated (failed to read 524288 bytes, got 19744)" in message
    assert message.endswith("copy it again from its source")
    assert "imagecodecs" not in message


@pytest.mark.parametrize("reader", sorted(READERS))
def test_truncated_png(tmp_path: Path, reader: str, capfd) -> None:
    bad = tmp_path / "cut.png"
    bad.write_bytes(_good_png(tmp_path / "whole.png")[:3000])
    message = _read_error(reader, bad, capfd)
    assert "the PNG file is truncated" in message
    assert message.endswith("copy it again from its source")


@pytest.mark.parametrize("reader", sorted(READERS))
def test_corrupt_png(tmp_path: Path, reader: str, capfd) -> None:
    data = bytearray(_good_png(tmp_path / "whole.png"))
    data[100:2000] = np.random.default_rng(2).integers(0, 255, 1900, dtype=np.uint8).tobytes()
    bad = tmp_path / "damaged.png"
    bad.write_bytes(bytes(data))
    message = _read_error(reader, bad, capfd)
    assert "the PNG file is damaged (broken PNG file" in message
    assert message.endswith("re-export it or copy it again from its source")


@pytest.mark.parametrize("reader", sorted(READERS))
def test_corrupt_tiff(tmp_path: Path, reader: str, capfd) -> None:
    data = bytearray(_good_tiff(tmp_path / "whole.tif"))
    data[8:200] = b"\xff" * 192  # the tag list
    bad = tmp_path / "damaged.tif"
    bad.write_bytes(bytes(data))
    message = _read_error(reader, bad, capfd)
    assert "the TIFF file is damaged (" in message
    assert message.endswith("re-export it or copy it again from its source")


@pytest.mark.parametrize("reader", sorted(READERS))
def test_text_file_named_tif(tmp_path: Path, reader: str, capfd) -> None:
    bad = tmp_path / "notes.tif"
    bad.write_text("hello world, this is not an image\n")
    message = _read_error(reader, bad, capfd)
    assert "it is not an image (it holds text ('hello world, thi'...))" in message
    assert "check that the path points at the TIFF file itself" in message
    assert "pyav" not in message


@pytest.mark.parametrize("reader", sorted(READERS))
def test_unknown_extension(tmp_path: Path, reader: str, capfd) -> None:
    bad = tmp_path / "scan.xyz"
    bad.write_bytes(b"\x00" * 100)
    message = _read_error(reader, bad, capfd)
    assert "unknown format '.xyz'; napari-ritm reads .bmp, .gif, .jpeg, .jpg, " in message
    assert message.endswith("convert it to TIFF or PNG")


def test_empty_file_and_misnamed_image(tmp_path: Path, capfd) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    assert "the file is empty (0 bytes)" in _read_error("image", tmp_path / "empty.png", capfd)
    # a PNG saved as .tif is read by its content
    png = _good_png(tmp_path / "a.png")
    (tmp_path / "png inside.tif").write_bytes(png)
    np.testing.assert_array_equal(
        read_image(tmp_path / "png inside.tif"), read_image(tmp_path / "a.png")
    )


def test_bad_file_in_a_data_set_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    image = np.zeros((40, 50, 3), np.uint8)
    mask = np.zeros((40, 50), np.uint8)
    mask[10:30, 10:30] = 255
    cv2.imwrite(str(root / "images" / "a.png"), image)
    cv2.imwrite(str(root / "masks" / "a.png"), mask)
    data = (root / "images" / "a.png").read_bytes()
    (root / "images" / "a.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cannot read image .*a\.png: the PNG file is trunc"):
        list(load_dataset(root))
