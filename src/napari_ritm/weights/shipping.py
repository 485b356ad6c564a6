"""Records of shipped checkpoints: sha256 and listing texts, generated from the checkpoint itself.

A shipped checkpoint ``checkpoints/<stem>.pth`` has a record ``checkpoints/<stem>.json`` beside
it, written when the model is shipped (``scripts/ship_default_model.py``)::

    {"file": ..., "sha256": ..., "size_bytes": ..., "variant": ..., "with_prev_mask": ...,
     "train_data": ..., "description": ..., "generated_by": ...}

The texts are generated from the checkpoint's ``metadata`` (what napari-ritm-finetune recorded:
its start weights, data sets, stages), never written by hand, so the listing cannot claim a
training that did not happen. ``napari-ritm weights list`` reads only the record (no torch);
the hash is checked on every load. Writing a record needs torch (the checkpoint is loaded).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .cache import sha256_file, write_record
from .registry import lookup_weights

__all__ = ["describe_training", "shipped_record", "write_shipped_record"]

_VARIANT_LABELS = {"hrnet18s": "HRNet18s+OCR", "hrnet18": "HRNet18+OCR", "hrnet32": "HRNet32+OCR"}


def _origin(metadata: Mapping[str, Any]) -> str:
    """ "trained from scratch" or "fine-tuned from X", from the first training stage's start."""
    training = metadata.get("training")
    stages = training.get("stages") if isinstance(training, Mapping) else None
    if stages and isinstance(stages[0], Mapping) and "init" in stages[0]:
        init = stages[0]["init"]
    else:
        init = metadata.get("init")
    if init is None:
        return "of unrecorded origin"
    if str(init).lower().startswith("scratch"):
        return "trained from scratch"
    source = Path(str(init)).name
    spec = lookup_weights(source)
    if spec is not None and spec.kind == "official":
        return f"fine-tuned from {spec.name} ({spec.train_data})"
    if spec is not None:  # one of ours: its own listing says what it was trained on
        return f"fine-tuned from {spec.name}"
    return f"fine-tuned from {source}"


def _length(metadata: Mapping[str, Any]) -> str:
    """ "11,500 iterations in 2 stages" (or the single run's iterations), "" if unrecorded."""
    training = metadata.get("training")
    if isinstance(training, Mapping) and training.get("iterations"):
        stages = training.get("stages") or []
        text = f"{int(training['iterations']):,} iterations"
        return text + (f" in {len(stages)} stages" if len(stages) > 1 else "")
    if metadata.get("iteration"):
        return f"{int(metadata['iteration']):,} iterations"
    return ""


def _data(metadata: Mapping[str, Any]) -> str:
    """The training data in one line, from ``metadata["data"]``."""
    data = metadata.get("data")
    if not isinstance(data, Mapping):
        return "unrecorded (the checkpoint has no data record)"
    parts = []
    sets = [s for s in data.get("train") or [] if isinstance(s, Mapping)]
    if sets:
        names = ", ".join(str(s.get("name", "?")) for s in sets)
        objects = sum(int(s.get("n_objects") or 0) for s in sets)
        microscopy = all("microscopy" in str(s.get("source", "")) for s in sets)
        kind = "microscopy data sets" if microscopy else "data sets"
        parts.append(f"{len(sets)} {kind} ({names}; {objects:,} objects)")
    synthetic = data.get("synthetic")
    if isinstance(synthetic, Mapping) and synthetic.get("n_images"):
        text = f"{int(synthetic['n_images'])} synthetic cell-like images"
        fraction = data.get("synthetic_fraction")
        if fraction:
            text += f" ({float(fraction):.0%} of the samples)"
        parts.append(text)
    return " + ".join(parts) or "unrecorded (the data record lists no set)"


def describe_training(
    metadata: Mapping[str, Any], variant: str, with_prev_mask: bool
) -> tuple[str, str]:
    """The listing texts of a checkpoint, from what training recorded in its metadata.

    Args:
        metadata: the checkpoint's ``metadata`` (as written by napari-ritm-finetune and
            ``scripts/ship_default_model.py``).
        variant: the architecture (``model.variant``).
        with_prev_mask: whether the model takes the previous mask (ITER-M).

    Returns:
        ``(train_data, description)``, e.g. ``("5 microscopy data sets (...) + 300 synthetic
        cell-like images (20% of the samples)", "HRNet18s+OCR ITER-M, trained from scratch with
        napari-ritm-finetune (11,500 iterations in 2 stages); ships with the package")``.
    """
    label = _VARIANT_LABELS.get(variant, variant)
    mode = "ITER-M" if with_prev_mask else "no previous-mask input"
    tool = " with napari-ritm-finetune" if metadata.get("kind") == "napari-ritm-finetune" else ""
    length = _length(metadata)
    description = f"{label} {mode}, {_origin(metadata)}{tool}"
    description += f" ({length}); ships with the package" if length else "; ships with the package"
    return _data(metadata), description


def shipped_record(path: Path) -> dict[str, Any]:
    """The record of a checkpoint file: its sha256 and size, architecture and listing texts.

    Args:
        path: the checkpoint (strictly loaded here, on CPU).

    Returns:
        The JSON-ready record (see the module docstring).

    Raises:
        CheckpointError: the file is not a loadable RITM checkpoint.
    """
    from napari_ritm.model import load_checkpoint

    path = Path(path)
    model = load_checkpoint(path, device="cpu")
    train_data, description = describe_training(model.metadata, model.variant, model.with_prev_mask)
    return {
        "file": path.name,
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size,
        "variant": model.variant,
        "with_prev_mask": bool(model.with_prev_mask),
        "train_data": train_data,
        "description": description,
        "generated_by": "napari_ritm.weights.shipping.write_shipped_record from the checkpoint",
    }


def write_shipped_record(path: Path, record_path: Path | None = None) -> Path:
    """Write the record of a shipped checkpoint, atomically.

    Args:
        path: the checkpoint file.
        record_path: where to write; default ``<stem>.json`` beside the checkpoint (the path
            the registry reads for files in the package's checkpoint folder).

    Returns:
        The record's path.
    """
    path = Path(path)
    return write_record(record_path or path.with_suffix(".json"), shipped_record(path))
