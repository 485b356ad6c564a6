"""_layers: planes of nD images, clicks from Points layers, commit rules, stack centre pixel."""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel
from napari.layers import Image, Points

from napari_ritm.errors import ImageFormatError
from napari_ritm.inference.clicks import Click
from napari_ritm.napari.layers import (
    ORDER,
    Plane,
    assign_click_order,
    centre_pixel,
    clicks_on_plane,
    commit_indices,
    current_plane,
    image_plane,
    spatial_shape,
    world_to_spatial,
)


def _points(coords, orders=None):
    coords = np.asarray(coords, dtype=float)
    layer = Points(
        coords,
        ndim=coords.shape[1],
        features={ORDER: np.full(len(coords), -1)},
        feature_defaults={ORDER: -1},
    )
    if orders is not None:
        layer.features = {ORDER: np.asarray(orders)}
    return layer


def test_plane_indices_and_views():
    plane = Plane(shape=(4, 10, 12), row_axis=1, col_axis=2, index=(2, 0, 0))
    assert plane.hw == (10, 12)
    assert plane.key == (2,)
    assert plane.data_index() == (2, slice(None), slice(None))
    idx = plane.nd_indices(np.array([1, 3]), np.array([5, 7]))
    assert [list(a) for a in idx] == [[2, 2], [1, 3], [5, 7]]
    assert plane.with_index(0, 3).index == (3, 0, 0)
    keep = plane.on_plane(np.array([[2.2, 1, 1], [1.0, 1, 1], [1.6, 4, 4]]))
    assert keep.tolist() == [True, False, True]


def test_current_plane_follows_dims_and_transposition():
    viewer = ViewerModel()
    data = np.zeros((5, 20, 30), dtype=np.uint16)
    layer = viewer.add_image(data, scale=(2.0, 1.0, 1.0))
    viewer.dims.set_point(0, 6.0)  # world z=6 -> data slice 3
    plane = current_plane(viewer, layer)
    assert (plane.row_axis, plane.col_axis, plane.key, plane.hw) == (1, 2, (3,), (20, 30))
    # show (z, x): rows are z, the fixed axis is y
    viewer.dims.order = (1, 0, 2)
    viewer.dims.set_point(1, 7.0)
    plane = current_plane(viewer, layer)
    assert (plane.row_axis, plane.col_axis, plane.key) == (0, 2, (7,))
    assert image_plane(layer, plane).shape == (5, 30)
    viewer.dims.ndisplay = 3
    with pytest.raises(ImageFormatError, match="2D"):
        current_plane(viewer, layer)


def test_image_plane_is_a_view_for_large_images():
    data = np.zeros((2, 1024, 1024), dtype=np.uint16)
    layer = Image(data)
    plane = Plane(spatial_shape(layer), 1, 2, (1, 0, 0))
    view = image_plane(layer, plane)
    assert view.shape == (1024, 1024)
    assert np.shares_memory(view, data)  # no copy of the image per click


def test_image_plane_rgb_and_channels_first():
    rgb = Image(np.zeros((3, 8, 9, 3), dtype=np.uint8), rgb=True)
    assert spatial_shape(rgb) == (3, 8, 9)
    assert image_plane(rgb, Plane((3, 8, 9), 1, 2, (2, 0, 0))).shape == (8, 9, 3)
    data = np.arange(2 * 3 * 8 * 9).reshape(2, 3, 8, 9)
    chan = Image(data)
    assert spatial_shape(chan, channel_axis=0) == (3, 8, 9)
    view = image_plane(chan, Plane((3, 8, 9), 1, 2, (1, 0, 0)), channel_axis=0)
    assert view.shape == (8, 9, 2)
    np.testing.assert_array_equal(view[..., 1], data[1, 1])


def test_world_to_spatial_uses_layer_transform():
    layer = Image(np.zeros((4, 10, 10)), scale=(1, 0.5, 0.5), translate=(0, 10, 20))
    np.testing.assert_allclose(world_to_spatial(layer, (2, 11, 21)), (2, 2, 2))
    # viewer with more dims than the layer: the layer sits on the trailing ones
    np.testing.assert_allclose(world_to_spatial(layer, (9, 2, 11, 21)), (2, 2, 2))


def test_assign_order_then_clicks_in_click_order():
    pos = _points([[0, 5, 5], [0, 7, 7]])
    neg = _points([[0, 6, 6]])
    counter = assign_click_order(pos, 0)
    counter = assign_click_order(neg, counter)
    assert counter == 3
    assert pos.features[ORDER].tolist() == [0, 1]
    # napari fills a new point's features from feature_defaults (the last selected point):
    # a repeated order, or a row reported as added, gets a fresh number
    dup = _points([[0, 1, 1], [0, 2, 2], [0, 3, 3]], orders=[4, 4, 5])
    assert assign_click_order(dup, 10) == 11
    assert dup.features[ORDER].tolist() == [4, 10, 5]
    assert assign_click_order(dup, 11, rows=[-1]) == 12
    assert dup.features[ORDER].tolist() == [4, 10, 11]
    # interleave: positive 0, negative 1, positive 2
    pos.features = {ORDER: [0, 2]}
    neg.features = {ORDER: [1]}
    plane = Plane((2, 10, 10), 1, 2, (0, 0, 0))
    clicks = clicks_on_plane(pos, neg, plane)
    assert clicks == [Click(5, 5, True), Click(6, 6, False), Click(7, 7, True)]
    # points of another slice and outside the image are not clicks of this plane
    other = _points([[1, 5, 5], [0, 12, 3]], orders=[3, 4])
    assert clicks_on_plane(other, None, plane) == []


def test_clicks_on_plane_rejects_wrong_dimensionality():
    with pytest.raises(ImageFormatError, match="dimensions"):
        clicks_on_plane(_points([[1, 2]]), None, Plane((2, 10, 10), 1, 2, (0, 0, 0)))


def test_commit_indices_respects_other_labels():
    labels = np.zeros((6, 6), dtype=np.uint16)
    labels[0:2, 0:6] = 5  # another object
    labels[4:6, 4:6] = 3  # the object being refined
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:4, 1:4] = True
    set_rc, clear_rc = commit_indices(labels, mask, 7)
    out = labels.copy()
    out[set_rc] = 7
    assert (out == 5).sum() == 12  # untouched
    assert (out == 7).sum() == 6  # rows 2..3 only
    assert len(clear_rc[0]) == 0
    set_rc, _ = commit_indices(labels, mask, 7, overwrite=True)
    assert len(set_rc[0]) == 9
    # refine object 3: its pixels outside the new mask are cleared
    mask2 = np.zeros((6, 6), dtype=bool)
    mask2[3:5, 3:5] = True
    set_rc, clear_rc = commit_indices(labels, mask2, 3, replace=3)
    out = labels.copy()
    out[set_rc] = 3
    out[clear_rc] = 0
    np.testing.assert_array_equal(out == 3, mask2)
    assert (out == 5).sum() == 12
    with pytest.raises(ImageFormatError):
        commit_indices(labels, mask[:3], 1)


def test_centre_pixel_is_deepest_point():
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:9, 10:25] = True
    row, col = centre_pixel(mask)
    assert (row, col) == (5, 17)  # deepest row, ridge point nearest the centroid
    assert mask[row, col]
    edge = np.zeros((10, 10), dtype=bool)
    edge[0:5, 0:5] = True  # touching the border: centre stays inside, not at the edge
    assert centre_pixel(edge) == (2, 2)
    assert centre_pixel(np.zeros((4, 4), dtype=bool)) is None
