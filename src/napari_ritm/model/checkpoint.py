"""Checkpoint I/O in the official RITM file format (ritm-reference §5-§6).

A checkpoint is ``torch.save`` of ``{"state_dict": ..., "config": {...}}``; ours add a
``"metadata"`` entry (plain builtins) that the official loader ignores. Loading never executes
code from the file (``weights_only=True``) and is strict: every key used, none missing, equal
shapes.

Errors say which of these went wrong: the file is missing; it is no checkpoint at all, is
truncated or damaged, or holds objects that could run code (:class:`UnreadableCheckpointError`,
decided from its first bytes before torch parses it, so torch's advice to retry with
``weights_only=False`` never reaches users); it is a checkpoint of another architecture
(:class:`~napari_ritm.errors.CheckpointError`); or torch is older than :data:`MIN_TORCH`
(:class:`~napari_ritm.errors.RitmError`, "needs torch >= 2.5, you have 2.3.1").
"""

from __future__ import annotations

import codecs
import logging
import math
import os
import pickle
import pickletools
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, RitmError
from ..fileio import atomic_write
from .configs import VARIANTS, official_config, variant_name
from .is_model import ISModel

logger = logging.getLogger(__name__)

#: Globals the unpickler may build beyond torch's weights-only defaults. The official format holds
#: only tensors, OrderedDicts, dicts, lists, tuples, strings, numbers, booleans and None, which the
#: defaults already cover, so nothing is added: anything else in a file is refused.
ALLOWED_GLOBALS: tuple[Any, ...] = ()

#: Oldest torch napari-ritm runs on. The binding API is ``torch.serialization.safe_globals``
#: (the context manager around every load, new in torch 2.5); everything else used in src/ and
#: training/ is older: ``torch.load(weights_only=True)`` 1.13, ``torch.amp.GradScaler("cuda")``
#: 2.3, ``torch.nn.utils.fusion.fuse_conv_bn_eval`` and ``torch.autocast("cpu", bfloat16)`` 1.x.
MIN_TORCH: tuple[int, int] = (2, 5)

_PREFIXES_TO_STRIP = ("module.", "_orig_mod.")
_ZIP_MAGIC = b"PK\x03\x04"
#: The pickled magic number that starts a legacy (pre-zip) ``torch.save`` file.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_SNIFF_BYTES = 512


class UnreadableCheckpointError(CheckpointError):
    """The file cannot be read as a checkpoint at all (as opposed to a readable file of the wrong
    architecture).

    Attributes:
        path: the file.
        problem: what is wrong, as a predicate of the file without advice, e.g. ``"is truncated
            (the zip archive has no central directory: the download or copy stopped early)"``;
            callers that know better advice (re-download, re-import) build their own message.
    """

    def __init__(self, path: Path, problem: str, advice: str) -> None:
        super().__init__(f"{path} {problem}; {advice}")
        self.path = path
        self.problem = problem


def _needs_newer_torch(installed: str) -> str:
    need = ".".join(map(str, MIN_TORCH))
    return (
        f"napari-ritm needs torch >= {need}, you have {installed}; upgrade torch "
        f"(`pip install 'torch>={need}'`, or the build for your machine from pytorch.org)"
    )


def torch_version_problem(version: str | None = None) -> str | None:
    """Why the installed torch is too old for napari-ritm, or None when it is recent enough.

    Args:
        version: a torch version string (default: ``torch.__version__``); local suffixes such as
            ``+cpu`` and pre-release tags are ignored, an unparsable string counts as recent.
    """
    text = str(torch.__version__ if version is None else version)
    match = re.match(r"(\d+)\.(\d+)", text)
    if match is None or (int(match.group(1)), int(match.group(2))) >= MIN_TORCH:
        return None
    return _needs_newer_torch(text)


def check_torch_version() -> None:
    """Refuse to go on with a torch older than :data:`MIN_TORCH`, in one clear line.

    Raises:
        RitmError: naming the needed and the installed version.
    """
    problem = torch_version_problem()
    if problem is not None:
        raise RitmError(problem)


def _sniff(head: bytes) -> str:
    """Guess a file's kind from its first bytes: zip, torch-legacy, pickle, html, text, binary."""
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_LEGACY_MAGIC):
        return "torch-legacy"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"  # a PROTO opcode: a Python pickle, but not one torch.save wrote
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if start.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in start:
        return "html"
    try:  # incremental: a character cut at the end of ``head`` is not an error
        text = codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        return "binary"
    return "text" if all(c.isprintable() or c in "\t\r\n" for c in text) else "binary"


def _pickle_globals(path: Path, limit: int = 100_000) -> list[str]:
    """The ``module.name`` globals a plain pickle refers to, read opcode by opcode (nothing in
    the file is executed); stops after ``limit`` opcodes."""
    found: list[str] = []
    strings: list[str] = []  # STACK_GLOBAL takes module and name from the last two strings
    try:
        with open(path, "rb") as fh:
            for count, (opcode, arg, _pos) in enumerate(pickletools.genops(fh)):
                if count >= limit:
                    break
                if opcode.name == "GLOBAL" and isinstance(arg, str):
                    found.append(arg.replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except (ValueError, EOFError, pickle.UnpicklingError):
        pass  # a broken pickle: report what was found before the break
    return found


def _not_a_checkpoint(path: Path, kind: str, head: bytes) -> str:
    """The problem sentence for a file whose first bytes are no PyTorch format."""
    if kind == "html":
        return (
            "is not a PyTorch checkpoint but a web page (HTML): a server answered with a page "
            "(an error, login or proxy page) instead of the file"
        )
    if kind == "pickle":
        names = _pickle_globals(path)
        if names:
            return (
                f"is not a PyTorch checkpoint but a plain Python pickle that refers to code "
                f"({', '.join(dict.fromkeys(names[:3]))}); loading it could run code from the file"
            )
        return "is not a PyTorch checkpoint but a plain Python pickle"
    if kind == "text":
        preview = head[:40].decode("utf-8", "replace").splitlines()[0] if head.strip() else ""
        return f"is not a PyTorch checkpoint but a text file (it starts with {preview!r})"
    return (
        "is not a PyTorch checkpoint (neither a zip archive nor a pickle; it starts with bytes "
        f"{head[:8].hex(' ')})"
    )


def _problem_from_load_error(exc: Exception, kind: str) -> str:
    """The problem sentence for an exception that ``torch.load`` raised on a zip/legacy file."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError):
        match = re.search(r"GLOBAL ([\w.]+)", text)
        if match is not None:
            return (
                f"holds Python objects other than tensors and plain data ({match.group(1)}): "
                "loading it could run code from the file, so it was refused"
            )
        return "is damaged: its pickled content cannot be read"
    if isinstance(exc, EOFError) or re.search(r"central directory|unexpected EOF", text):
        return "is truncated: the file ends early (the download or copy did not finish)"
    if isinstance(exc, RuntimeError) and kind == "zip":
        detail = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", text.splitlines()[0])
        return f"is a zip archive but not a PyTorch checkpoint ({detail[:120]})"
    return f"is damaged: torch cannot read it ({type(exc).__name__}: {text.splitlines()[0][:120]})"


_LOAD_ADVICE = "pass a .pth checkpoint saved by napari-ritm or released with RITM"


def _read_file(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    check_torch_version()
    with open(path, "rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    if not head:
        raise UnreadableCheckpointError(
            path, "is empty (0 bytes): the download or copy did not finish", _LOAD_ADVICE
        )
    kind = _sniff(head)
    if kind not in ("zip", "torch-legacy"):
        # Refused before torch.load: its messages for non-checkpoints suggest weights_only=False.
        raise UnreadableCheckpointError(path, _not_a_checkpoint(path, kind, head), _LOAD_ADVICE)
    try:
        allow = torch.serialization.safe_globals
    except AttributeError as exc:  # the version check above cannot see patched or odd builds
        raise RitmError(_needs_newer_torch(f"{torch.__version__} without safe_globals")) from exc
    try:
        with allow(list(ALLOWED_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        EOFError,
        RuntimeError,
        ValueError,
        IndexError,
        KeyError,
        OverflowError,
        struct.error,
        zipfile.BadZipFile,
        # torch's own API was checked above (version, safe_globals), so these two come from
        # content the unpickler could not rebuild.
        AttributeError,
        TypeError,
    ) as exc:
        # What torch's unpickler and zip reader raise where parsing breaks.
        raise UnreadableCheckpointError(
            path, _problem_from_load_error(exc, kind), _LOAD_ADVICE
        ) from exc


def _clean_state_dict(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    cleaned = {}
    for key, value in state_dict.items():
        for prefix in _PREFIXES_TO_STRIP:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        cleaned[key] = value
    return cleaned


def infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, bool]:
    """Infer ``(variant, with_prev_mask)`` from the tensor shapes alone (§5, last paragraph).

    Raises:
        CheckpointError: if the shapes match no RITM HRNet+OCR variant.
    """
    try:
        coord_channels = state_dict["maps_transform.0.weight"].shape[1]
        width = state_dict["feature_extractor.transition1.0.0.weight"].shape[0]
        ocr_mid = state_dict["feature_extractor.conv3x3_ocr.0.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(
            f"not a RITM HRNet+OCR state dict: key {exc.args[0]!r} is missing"
        ) from exc
    small = "feature_extractor.layer1.2.conv1.weight" not in state_dict
    try:
        variant = variant_name(int(width), int(ocr_mid) // 2, small)
    except KeyError as exc:
        raise CheckpointError(
            f"the checkpoint's architecture (HRNet width {width}, OCR width {ocr_mid // 2}, "
            f"small={small}) is none of the supported variants {sorted(VARIANTS)}"
        ) from exc
    if coord_channels not in (2, 3):
        raise CheckpointError(
            f"maps_transform.0.weight has {coord_channels} input channels, expected 2 or 3"
        )
    return variant, coord_channels == 3


def _config_architecture(config: Any) -> tuple[str, bool] | None:
    if not isinstance(config, Mapping) or "params" not in config:
        return None
    params = config["params"]

    def value(name: str, default: Any) -> Any:
        entry = params.get(name)
        return entry.get("value", default) if isinstance(entry, Mapping) else default

    try:
        variant = variant_name(
            int(value("width", 0)), int(value("ocr_width", 0)), bool(value("small", False))
        )
    except (KeyError, TypeError, ValueError):
        return None
    return variant, bool(value("with_prev_mask", False))


def load_state_dict_strict(
    model: ISModel, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Copy ``state_dict`` into ``model``; every key must exist on both sides with equal shapes.

    Half-precision tensors are accepted and cast to the model's dtype.

    Raises:
        CheckpointError: listing the first missing / unexpected / mis-shaped keys.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mis_shaped:
        parts = [
            f"{source} does not match the {model.variant} architecture "
            f"({len(state_dict)} keys in the file, {len(expected)} expected)"
        ]
        if missing:
            parts.append(f"missing {len(missing)}: {', '.join(missing[:5])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:5])}")
        if mis_shaped:
            parts.append(f"wrong shape {len(mis_shaped)}: {'; '.join(mis_shaped[:3])}")
        raise CheckpointError(". ".join(parts))
    for key, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(
                f"{source}: entry {key!r} is a {type(tensor).__name__}, not a tensor"
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{source}: entry {key!r} holds NaN or infinite values")
    converted = {
        k: (v.to(expected[k].dtype) if v.is_floating_point() else v) for k, v in state_dict.items()
    }
    model.load_state_dict(converted, strict=True)


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device | None = "cpu",
    variant: str | None = None,
) -> ISModel:
    """Load an official-format RITM checkpoint strictly, in eval mode.

    Args:
        path: a ``.pth`` file in the official format (``{"state_dict", "config"}``), optionally
            with our ``"metadata"``; a bare state dict is accepted too.
        device: where to put the model; ``None`` picks the best available (see ``select_device``).
        variant: expected architecture; a file of another one is refused with a clear error.

    Returns:
        The model, in ``eval()`` mode, with ``model.metadata`` set from the file.

    Raises:
        CheckpointError: missing, unreadable or unsafe file, or keys/shapes that do not match.
    """
    from . import select_device

    path = Path(path)
    content = _read_file(path)
    if isinstance(content, (list, tuple)) and content and isinstance(content[0], Mapping):
        content = content[0]  # a multi-stage "click models" checkpoint: the first is the main net
    if not isinstance(content, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(content).__name__}, not a RITM checkpoint dict"
        )
    state_dict = content.get("state_dict", content)
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise CheckpointError(f"{path} has no 'state_dict' entry")
    state_dict = _clean_state_dict(state_dict)
    arch = infer_architecture(state_dict)
    config_arch = _config_architecture(content.get("config"))
    if config_arch is not None and config_arch != arch:
        raise CheckpointError(
            f"{path}: its config describes {config_arch[0]} (prev mask: {config_arch[1]}) but its "
            f"weights are {arch[0]} (prev mask: {arch[1]})"
        )
    if variant is not None and arch[0] != variant:
        raise CheckpointError(
            f"{path} is a {arch[0]} checkpoint ({len(state_dict)} keys), expected {variant}; "
            f"choose the {arch[0]} architecture instead"
        )
    model = ISModel(arch[0], with_prev_mask=arch[1])
    load_state_dict_strict(model, state_dict, source=str(path))
    metadata = content.get("metadata")
    model.metadata = dict(metadata) if isinstance(metadata, Mapping) else {}
    model.metadata.setdefault("source", str(path))
    model.eval()
    target = select_device(device) if device is None or isinstance(device, str) else device
    logger.info(
        "loaded %s (%s) from %s on %s",
        arch[0],
        "ITER-M" if arch[1] else "no prev mask",
        path,
        target,
    )
    return model.to(target)


def _check_plain(value: Any, where: str) -> None:
    # Exact types: a str/int subclass (e.g. torch.__version__) would be refused at load time.
    if value is None or type(value) in (bool, int, str):
        return
    if type(value) is float:
        if not math.isfinite(value):
            raise ValueError(f"metadata {where} is {value}; use None for missing numbers")
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise ValueError(f"metadata {where} has a non-string key {key!r}")
            _check_plain(item, f"{where}.{key}")
        return
    raise ValueError(
        f"metadata {where} is a {type(value).__name__}; only str, int, float, bool, None, "
        "lists and dicts can be stored (they load with weights_only=True)"
    )


def save_checkpoint(
    model: ISModel,
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Save ``model`` in the official RITM format (loadable by the official code too).

    Args:
        model: the network (a DDP/compiled wrapper is unwrapped by key prefix).
        path: destination; written atomically (temporary file, then rename).
        metadata: plain-data information stored under ``"metadata"`` (training command, data,
            normalization, scores...).
        half: store floating-point tensors as float16 (halves the file; loading casts back).

    Returns:
        The written path.

    Raises:
        RitmError: if the disk is full or the folder is not writable.
    """
    path = Path(path)
    state_dict = _clean_state_dict(model.state_dict())
    state = {
        k: (
            v.detach().to("cpu", torch.float16)
            if half and v.is_floating_point()
            else v.detach().cpu()
        )
        for k, v in state_dict.items()
    }
    content: dict[str, Any] = {
        "state_dict": state,
        "config": official_config(model.variant, with_prev_mask=model.with_prev_mask),
    }
    if metadata:
        meta = dict(metadata)
        _check_plain(meta, "")
        content["metadata"] = meta
    # The size is stated if the disk fills up; the written file is about the tensors' bytes.
    needed = sum(v.numel() * v.element_size() for v in state.values())
    atomic_write(path, lambda tmp: torch.save(content, tmp), needed_bytes=needed)
    return path
