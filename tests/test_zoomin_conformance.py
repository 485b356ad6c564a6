"""ZoomIn ROI, crop and click mapping against the official transform (conformance README 3f)."""

from __future__ import annotations

import numpy as np
import torch
from conftest import load_npz

from napari_ritm.inference.clicks import Click
from napari_ritm.inference.transforms import ZoomIn, ZoomInState


def test_zoomin_cases_match_reference(conformance_dir):
    data = load_npz(conformance_dir, "zoomin_cases")
    image = torch.from_numpy(data["image_u8"].astype(np.float32) / np.float32(255.0))
    x = image[None, None].repeat(1, 4, 1, 1)
    n_cases = data["prev_probs"].shape[0]
    for k in range(n_cases):
        rows = [r for r in data["clicks"][k] if r[0] >= 0]
        clicks = [Click(int(r), int(c), bool(p)) for r, c, p in rows]
        zoom = ZoomIn(target_size=400)
        zoom.set_state(ZoomInState(prev_probs=data["prev_probs"][k]))
        out, tclicks = zoom.forward(x, clicks)
        assert zoom.roi == tuple(int(v) for v in data["roi"][k]), f"case {k}"
        assert zoom.image_changed
        want_img = data[f"roi_image_ch0_{k}"]
        assert tuple(out.shape[-2:]) == want_img.shape, f"case {k}"
        np.testing.assert_allclose(out[0, 0].numpy(), want_img, rtol=0, atol=1e-5)
        want = data["transformed_clicks"][k][: len(clicks)]
        got = np.array([[c.row, c.col, c.positive] for c in tclicks], dtype=np.float64)
        np.testing.assert_allclose(got[:, :2], want[:, :2], rtol=0, atol=1e-9)
        np.testing.assert_array_equal(got[:, 2], want[:, 2])
