"""The Fine-tune dock widget: layer pairs -> a tiny run in a thread worker -> a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
from napari_ritm_training.synthetic import SyntheticConfig, synthetic_cells


@pytest.fixture
def viewer_with_cells(make_napari_viewer):
    viewer = make_napari_viewer()
    image, labels = synthetic_cells(
        np.random.default_rng(0), SyntheticConfig(shape=(96, 96), n_objects=(4, 8))
    )
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels, name="cells labels")
    return viewer


@pytest.mark.gui
@pytest.mark.slow
def test_widget_trains_on_layers(viewer_with_cells, qtbot, tmp_path, monkeypatch):
    from napari_ritm.model import load_checkpoint
    from napari_ritm.napari.finetune_widget import SCRATCH, FinetuneWidget

    shown = []
    monkeypatch.setattr("napari_ritm.napari.finetune_widget.show_info", shown.append)
    widget = FinetuneWidget(viewer_with_cells)
    assert widget.image.value == "cells" and widget.labels.value == "cells labels"
    widget._on_add_pair()
    assert widget.pairs == [("cells", "cells labels")]
    widget.out.value = str(tmp_path / "run")
    widget.start_from.value = SCRATCH
    widget.epochs.value, widget.iters.value, widget.batch_size.value = 1, 2, 2
    widget.crop.value = 64
    widget.device.value = "cpu"
    cfg = widget.make_config()
    assert cfg.from_weights is None and cfg.crop == (64, 64) and cfg.iters_per_epoch == 2
    widget._on_start()
    assert widget.worker is not None and not widget.start.enabled
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert widget.checkpoint == tmp_path / "run" / "best.pth"
    model = load_checkpoint(widget.checkpoint)
    assert model.metadata["data"]["train"][0]["name"] == "layers"
    assert any(str(widget.checkpoint) in msg for msg in shown)
    assert widget.start.enabled and widget.status.value.startswith("done")


@pytest.mark.gui
def test_widget_refuses_to_start_without_data(make_napari_viewer, monkeypatch):
    from napari_ritm.napari.finetune_widget import FinetuneWidget

    errors = []
    monkeypatch.setattr("napari_ritm.napari.finetune_widget.show_error", errors.append)
    widget = FinetuneWidget(make_napari_viewer())
    widget._on_start()
    assert widget.worker is None
    assert errors and "nothing to train on" in errors[0]
