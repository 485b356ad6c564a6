"""Training data: folder/stack/array readers, errors, split by image, augmentation, synthetic."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile
from napari_ritm_training.augment import AugmentConfig, ImageStats, augment_crop
from napari_ritm_training.data import (
    TrainingBatcher,
    check_pair,
    from_arrays,
    load_folder,
    make_validation_samples,
    split_by_group,
)
from napari_ritm_training.sampler import MultiPointSampler
from napari_ritm_training.synthetic import SyntheticConfig, make_synthetic_dataset, synthetic_cells

from napari_ritm.errors import DatasetError


def _disk_labels(shape=(120, 120), centres=((30, 30), (80, 70)), radius=12) -> np.ndarray:
    rr, cc = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for i, (r, c) in enumerate(centres, start=1):
        labels[(rr - r) ** 2 + (cc - c) ** 2 <= radius**2] = i
    return labels


def _write_folder(root, n=4, stack=False):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    lines = ["image,label"]
    for i in range(n):
        image, labels = synthetic_cells(rng, SyntheticConfig(shape=(96, 96), n_objects=(4, 8)))
        if stack:
            image, labels = np.stack([image, image]), np.stack([labels, labels])
        tifffile.imwrite(root / "images" / f"img{i}.tif", image)
        tifffile.imwrite(root / "labels" / f"lab{i}.tif", labels.astype(np.uint16))
        lines.append(f"images/img{i}.tif,labels/lab{i}.tif")
    (root / "pairs.csv").write_text("\n".join(lines) + "\n")
    return root


# --- errors --------------------------------------------------------------------------------------


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(DatasetError, match="shape"):
        check_pair(np.zeros((10, 12)), np.ones((10, 11), np.int32), "pair")


def test_empty_labels_are_refused():
    with pytest.raises(DatasetError, match="empty"):
        check_pair(np.zeros((10, 12)), np.zeros((10, 12), np.int32), "pair")


def test_float_labels_are_refused():
    labels = np.zeros((10, 12), np.float32)
    labels[2:5, 2:5] = 1.5
    with pytest.raises(DatasetError, match="non-integer"):
        check_pair(np.zeros((10, 12)), labels, "pair")
    labels[2:5, 2:5] = 2.0  # whole numbers stored as float are fine
    assert check_pair(np.zeros((10, 12)), labels, "pair")[1].dtype == np.int32


def test_no_pairs_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="no image/labels pairs"):
        from_arrays([], [])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError):
        load_folder(tmp_path / "empty")
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "pairs.csv").write_text("image,label\n")
    with pytest.raises(DatasetError, match="no image pairs"):
        load_folder(tmp_path / "csv")


def test_folder_with_mismatched_files_is_refused(tmp_path):
    root = _write_folder(tmp_path / "d", n=1)
    tifffile.imwrite(root / "labels" / "lab0.tif", np.ones((50, 50), np.uint16))
    with pytest.raises(DatasetError, match="shape"):
        load_folder(root)


# --- readers and split --------------------------------------------------------------------------


def test_load_folder_and_stacks(tmp_path):
    flat = load_folder(_write_folder(tmp_path / "flat", n=3))
    assert len(flat.images) == 3 and len(flat.groups) == 3
    im = flat.images[0]
    assert im.image.dtype == np.float32 and im.image.shape == (96, 96, 1)
    assert 0.0 <= im.image.min() and im.image.max() <= 1.0
    assert im.normalization["method"] in ("u8", "percentile")
    assert im.n_objects == len(np.unique(im.labels[im.labels > 0]))
    stacks = load_folder(_write_folder(tmp_path / "stacks", n=3, stack=True))
    assert len(stacks.images) == 6 and len(stacks.groups) == 3
    assert stacks.images[1].name.endswith(":z1")
    assert stacks.images[0].group == stacks.images[1].group


def test_split_is_by_group_and_seeded(tmp_path):
    data = load_folder(_write_folder(tmp_path / "s", n=5, stack=True))
    train, val, record = split_by_group([data], 0.4, seed=3)
    train_groups = {im.group for d in train for im in d.images}
    val_groups = {im.group for im in val}
    assert len(val_groups) == 2 and len(train_groups) == 3
    assert not train_groups & val_groups, "a stack is never on both sides"
    assert len(val) == 4  # both slices of each held-out stack
    assert sorted(record["datasets"]["s"]["val_groups"]) == sorted(val_groups)
    _, val2, _ = split_by_group([data], 0.4, seed=3)
    assert [im.name for im in val2] == [im.name for im in val]
    one = from_arrays([np.zeros((40, 40), np.uint8)], [_disk_labels((40, 40), ((20, 20),), 8)])
    train, val, _ = split_by_group([one], 0.5, seed=0)
    assert val == [] and len(train[0].images) == 1


def test_a_benchmark_mask_is_one_object_in_all_its_pieces(tmp_path):
    # evaluation scores the whole mask as one object (a DAVIS person cut in two by a pole), so
    # training must not learn its pieces as separate objects
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    mask = np.zeros((60, 80), np.uint8)
    mask[10:30, 5:25] = 255
    mask[35:55, 50:75] = 255  # a second piece of the same object
    tifffile.imwrite(tmp_path / "images" / "a.tif", np.full((60, 80, 3), 90, np.uint8))
    tifffile.imwrite(tmp_path / "masks" / "a.tif", mask)
    grabcut = np.where(mask > 0, 255, 0).astype(np.uint8)
    grabcut[30:35, 5:25] = 128  # GrabCut's unsure band
    tifffile.imwrite(tmp_path / "images" / "b.tif", np.full((60, 80, 3), 90, np.uint8))
    tifffile.imwrite(tmp_path / "masks" / "b.tif", grabcut)
    data = load_folder(tmp_path)
    one, band = data.images
    assert one.n_objects == 1 and sorted(np.unique(one.labels)) == [0, 1]
    np.testing.assert_array_equal(one.labels == 1, mask > 0)
    assert band.n_objects == 1 and sorted(np.unique(band.labels)) == [-1, 0, 1]
    assert (band.labels[30:35, 5:25] == -1).all()


def test_benchmark_masks_keep_grabcuts_ignore_band(shared_data_dir):
    data = load_folder(shared_data_dir / "benchmarks" / "GrabCut")
    im = data.images[0]
    assert im.image.shape[2] == 3
    assert all(d.n_objects == 1 for d in data.images)
    assert any((d.labels == -1).any() for d in data.images)


def test_from_arrays_rgb_and_stack():
    rgb = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    stack = np.random.default_rng(1).integers(0, 4000, (3, 40, 50), dtype=np.uint16)
    labels = _disk_labels((40, 50), ((20, 20),), 8)
    data = from_arrays([rgb, stack], [labels, np.stack([labels] * 3)], names=["a", "b"])
    assert [im.image.shape[2] for im in data.images] == [3, 1, 1, 1]
    np.testing.assert_allclose(data.images[0].image, rgb / 255.0, atol=1e-6)
    assert data.images[1].normalization["method"] == "percentile"
    assert {im.group for im in data.images} == {"layers/a", "layers/b"}


def test_validation_samples_are_uint8_crops_around_objects():
    labels = _disk_labels((200, 220))
    data = from_arrays([np.full((200, 220), 100, np.uint8)], [labels])
    samples = make_validation_samples(data.images, max_objects=5, crop=64, seed=0)
    assert len(samples) == 2
    for s in samples:
        assert s.image.dtype == np.uint8 and s.image.shape == s.gt.shape == (64, 64)
        assert (s.gt == 1).sum() == (labels == 1).sum()  # the whole object is inside the crop


# --- augmentation --------------------------------------------------------------------------------


def test_augment_shapes_grey_and_label_values():
    labels = _disk_labels()
    image = np.random.default_rng(0).random((120, 120, 1)).astype(np.float32)
    cfg = AugmentConfig(crop=(64, 80), noise_prob=1.0, blur_prob=1.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        img, lab = augment_crop(image, labels, rng, cfg, ImageStats.from_labels(labels))
        assert img.shape == (64, 80, 3) and img.dtype == np.float32
        assert lab.shape == (64, 80) and lab.dtype == np.int32
        assert 0.0 <= img.min() and img.max() <= 1.0
        np.testing.assert_array_equal(img[..., 0], img[..., 2])  # grey stays grey
        assert set(np.unique(lab)) <= {0, 1, 2}  # nearest resampling: no new ids


def test_object_size_scaling_hits_the_diameter_range():
    labels = _disk_labels((400, 400), ((200, 200),), radius=60)  # diameter 120 px
    image = np.zeros((400, 400, 1), np.float32)
    cfg = AugmentConfig(crop=(192, 192), diameter_range=(20.0, 40.0), center_on_object_prob=1.0)
    stats = ImageStats.from_labels(labels)
    assert stats.diameters[0] == pytest.approx(120, rel=0.02)
    rng = np.random.default_rng(0)
    diameters = []
    for _ in range(30):
        _, lab = augment_crop(image, labels, rng, cfg, stats)
        diameters.append(math.sqrt(4 * (lab == 1).sum() / math.pi))
    assert min(diameters) > 18 and max(diameters) < 43


def test_uniform_scale_and_padding():
    labels = np.zeros((20, 30), np.int32)
    labels[5:15, 5:25] = 1
    image = np.ones((20, 30, 3), np.float32)
    cfg = AugmentConfig(
        crop=(64, 64),
        scale_mode="none",
        brightness_contrast_prob=0,
        gamma_prob=0,
        rgb_shift_prob=0,
        blur_prob=0,
        noise_prob=0,
    )
    img, lab = augment_crop(image, labels, np.random.default_rng(0), cfg)
    assert (lab == 1).sum() == 200, "no rescaling: the object keeps its area"
    assert img.sum() == pytest.approx(20 * 30 * 3)  # zero padding around the whole image


# --- synthetic and batches ----------------------------------------------------------------------


def test_synthetic_cells_are_reproducible_and_valid():
    a_img, a_lab = synthetic_cells(np.random.default_rng(5))
    b_img, b_lab = synthetic_cells(np.random.default_rng(5))
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert a_img.dtype in (np.uint8, np.uint16) and a_img.shape == (256, 256)
    ids = np.unique(a_lab[a_lab > 0])
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
    # Objects are brighter than the background on average (unless inverted, p 0.15).
    dtypes = set()
    for seed in range(8):
        img, lab = synthetic_cells(np.random.default_rng(seed))
        dtypes.add(img.dtype)
        assert lab.max() >= 1
    assert dtypes == {np.dtype(np.uint8), np.dtype(np.uint16)}
    pool = make_synthetic_dataset(3, seed=0)
    assert len(pool.images) == 3 and pool.images[0].image.shape[2] == 1


def test_batcher_shapes_and_targets(tmp_path):
    data = load_folder(_write_folder(tmp_path / "b", n=2))
    synth = make_synthetic_dataset(2, seed=1, cfg=SyntheticConfig(shape=(96, 96)))
    batcher = TrainingBatcher(
        [data],
        AugmentConfig(crop=(64, 64)),
        MultiPointSampler(),
        min_object_area=20,
        synthetic=synth,
        synthetic_fraction=0.5,
    )
    images, points, gt = batcher.batch(np.random.default_rng(0), 6)
    assert images.shape == (6, 3, 64, 64) and images.dtype == np.float32
    assert points.shape == (6, 48, 3) and gt.shape == (6, 1, 64, 64)
    assert (gt.reshape(6, -1).max(axis=1) == 1).all(), "each crop has a target"
    valid = points[..., 0] >= 0
    assert (points[valid][:, :2] < 64).all()
    again = batcher.batch(np.random.default_rng(0), 6)
    np.testing.assert_array_equal(again[1], points)  # seeded: identical batches


def test_each_data_set_can_have_its_own_diameter_range():
    labels = _disk_labels((400, 400), ((200, 200),), radius=60)  # diameter 120 px
    image = np.linspace(0, 1, 400 * 400, dtype=np.float32).reshape(400, 400)
    small, large = (from_arrays([image], [labels], dataset_name=n) for n in ("small", "large"))
    augment = AugmentConfig(crop=(192, 192), diameter_range=(80.0, 100.0), center_on_object_prob=1)

    def target_diameters(weights):
        batcher = TrainingBatcher(
            [small, large], augment, MultiPointSampler(), min_object_area=20,
            weights=weights, diameter_ranges=[(20.0, 40.0), None],
        )  # fmt: skip
        _, _, gt = batcher.batch(np.random.default_rng(0), 16)
        return np.sqrt(4 * gt.reshape(16, -1).sum(axis=1) / math.pi)

    assert target_diameters([1, 0]).max() < 43  # its own range
    assert np.median(target_diameters([0, 1])) > 70  # the default range (80-100)
    with pytest.raises(ValueError):
        TrainingBatcher([small], augment, MultiPointSampler(), diameter_ranges=[None, None])


def test_diameter_ranges_per_folder_from_the_command_line(tmp_path):
    from napari_ritm_training.cli import build_parser, config_from_args

    from napari_ritm.errors import RitmError

    a, b = _write_folder(tmp_path / "a", n=1), _write_folder(tmp_path / "b", n=1)
    args = build_parser().parse_args(
        ["--data", str(a), str(b), "--data-diameter-ranges", "8:160", "default"]
    )
    config = config_from_args(args)
    config.validate()
    assert config.diameter_ranges() == [(8.0, 160.0), None]
    for bad in (
        ["8:160"],
        ["160:8", "default"],
        ["8-160", "default"],
        ["0:5", "default"],
        ["8:inf", "default"],
    ):
        args.data_diameter_ranges = bad
        with pytest.raises(RitmError, match="diameter range"):
            config_from_args(args).validate()


def test_invert_augmentation_maps_x_to_one_minus_x():
    from napari_ritm_training.augment import AugmentConfig, _intensity

    cfg = AugmentConfig(
        brightness_contrast_prob=0.0,
        gamma_prob=0.0,
        rgb_shift_prob=0.0,
        blur_prob=0.0,
        noise_prob=0.0,
        invert_prob=1.0,
    )
    img = np.random.default_rng(0).random((8, 9, 1)).astype(np.float32)
    np.testing.assert_allclose(_intensity(img, np.random.default_rng(1), cfg), 1.0 - img)
    cfg.invert_prob = 0.0
    np.testing.assert_array_equal(_intensity(img, np.random.default_rng(1), cfg), img)


def test_object_diameter_range_follows_the_median_object():
    from napari_ritm_training.data import object_diameter_range

    labels = np.zeros((2, 200, 200), dtype=np.uint16)
    rr, cc = np.ogrid[:200, :200]
    # slice 0: discs of radius 20, 30, 40 (ids 1-3); slice 1: the same ids again, radius 30
    for i, (r, c, radius) in enumerate([(50, 50, 20), (50, 140, 30), (140, 100, 40)], start=1):
        labels[0][(rr - r) ** 2 + (cc - c) ** 2 <= radius**2] = i
    labels[1][(rr - 100) ** 2 + (cc - 100) ** 2 <= 30**2] = 2  # per plane: id 2 counted again
    low, high = object_diameter_range([labels, np.full((5, 5), -1)])  # ignore (-1) is no object
    assert low == pytest.approx(0.4 * 60, rel=0.02) and high == pytest.approx(1.5 * 60, rel=0.02)
    assert object_diameter_range([np.zeros((8, 8), int)]) is None
    assert object_diameter_range([np.ones((2, 2), int)]) == (8.0, 9.0)  # the floor
