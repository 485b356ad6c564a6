"""Reading image, mask and label files, with one clear error per unreadable file.

A file is recognised by its leading bytes (whatever its name says), PNGs are verified with PIL
before OpenCV decodes them, and library warnings and console output are silenced while reading,
so a truncated, damaged, mislabelled or unknown file gives one :class:`ImageReadError` line that
names the file, the problem and what to do.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from napari_ritm.errors import DatasetError, ImageReadError

__all__ = [
    "IMAGE_EXTENSIONS",
    "TIFF_EXTENSIONS",
    "check_image_file",
    "read_image",
    "read_mask",
    "read_tiff",
    "to_rgb_uint8",
]

log = logging.getLogger(__name__)

#: File extensions (lower case) that are read as images, masks or labels.
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm"}
)
TIFF_EXTENSIONS = frozenset({".tif", ".tiff"})


#: Leading bytes of each readable format (what the file holds, whatever its name says).
_MAGIC: tuple[tuple[str, tuple[bytes, ...]], ...] = (
    ("TIFF", (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")),
    ("PNG", (b"\x89PNG\r\n\x1a\n",)),
    ("JPEG", (b"\xff\xd8\xff",)),
    ("BMP", (b"BM",)),
    ("GIF", (b"GIF87a", b"GIF89a")),
    ("PNM", (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6")),
)
_FORMAT_OF_SUFFIX = {
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".bmp": "BMP",
    ".gif": "GIF",
    ".webp": "WEBP",
    ".ppm": "PNM",
    ".pgm": "PNM",
}
#: Words in a decoder's message that mean the data stops early.
_TRUNCATION_HINTS = ("truncated", "failed to read", "incomplete", "end of file", "eof")


def _sniff(header: bytes) -> str | None:
    """The image format the leading bytes announce, or None when none matches."""
    if header[:4] == b"RIFF" and header[8:12] == b"WEBP":
        return "WEBP"
    for name, prefixes in _MAGIC:
        if header.startswith(prefixes):
            return name
    return None


def _describe_bytes(header: bytes) -> str:
    """A short description of what a non-image file starts with (for the error message)."""
    text = header[:16]
    if header and all(32 <= b < 127 or b in (9, 10, 13) for b in header[:64]):
        kind = "HTML" if header.lstrip()[:1] == b"<" else "text"
        return f"it holds {kind} ({text.decode('ascii', 'replace')!r}...)"
    return f"it starts with {text!r}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Silence the warnings of the image libraries while reading (the error says it all)."""
    tiff_log = logging.getLogger("tifffile")
    level = tiff_log.level
    tiff_log.setLevel(logging.ERROR + 10)
    try:
        import cv2

        cv2_level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except (ImportError, AttributeError):  # pragma: no cover - OpenCV without its logging API
        cv2_level = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        tiff_log.setLevel(level)
        if cv2_level is not None:
            cv2.utils.logging.setLogLevel(cv2_level)


def _read_error(path: Path, role: str, problem: str, todo: str) -> ImageReadError:
    return ImageReadError(f"cannot read {role} {path}: {problem}; {todo}")


def _decode_error(path: Path, role: str, fmt: str, exc: BaseException) -> ImageReadError:
    """Classify a decoder failure on a file whose header is right: truncated or damaged."""
    detail = _one_line(exc)
    if any(hint in detail.lower() for hint in _TRUNCATION_HINTS):
        return _read_error(
            path,
            role,
            f"the {fmt} file is truncated ({detail})",
            "it was probably cut short by an interrupted copy or download; copy it again from "
            "its source",
        )
    if fmt == "TIFF" and isinstance(exc, ValueError) and "imagecodecs" in detail:
        return _read_error(
            path,
            role,
            f"its TIFF compression needs a codec that is not installed ({detail})",
            "install it with `pip install imagecodecs`",
        )
    return _read_error(
        path,
        role,
        f"the {fmt} file is damaged ({detail})",
        "re-export it or copy it again from its source",
    )


def check_image_file(path: str | Path, role: str = "image") -> str:
    """Check that ``path`` is a readable-looking image file, without decoding its pixels.

    Args:
        path: The file.
        role: What the file is for, used in messages (``"image"``, ``"mask"``, ``"labels"``).

    Returns:
        The format its content announces (``"TIFF"``, ``"PNG"``, ...), which decides the
        decoder.

    Raises:
        DatasetError: The file does not exist.
        ImageReadError: Unknown extension, empty file, or not an image. (An image of another
            format than its extension says is accepted and read by its content.)
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{role} file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise _read_error(
            path,
            role,
            f"unknown format {suffix or '(no extension)'!r}",
            f"napari-ritm reads {', '.join(sorted(IMAGE_EXTENSIONS))}; convert it to TIFF or PNG",
        )
    with path.open("rb") as f:
        header = f.read(64)
    if not header:
        raise _read_error(
            path, role, "the file is empty (0 bytes)", "copy it again from its source"
        )
    expected = _FORMAT_OF_SUFFIX[suffix]
    found = _sniff(header)
    if found is None:
        raise _read_error(
            path,
            role,
            f"it is not an image ({_describe_bytes(header)})",
            f"check that the path points at the {expected} file itself, not a download page or "
            "a note",
        )
    if found != expected:  # e.g. a JPEG saved as .png: read by content, as OpenCV would
        log.debug("%s holds a %s image despite its %s extension", path, found, suffix)
    return found


def read_image(path: str | Path, *, rgb: bool = False) -> np.ndarray:
    """Read an image file, keeping its dtype.

    TIFFs are read with tifffile (compressed ones need ``imagecodecs``); other formats with
    OpenCV, converted from BGR(A) to RGB(A). Library warnings are silenced; a bad file is one
    :class:`~napari_ritm.errors.ImageReadError` naming the file, the problem and the fix.

    Args:
        path: Image file.
        rgb: Return (H, W, 3) uint8 RGB like the reference benchmark loader
            (``cv2.imread`` + BGR->RGB, EXIF orientation applied). Otherwise the stored layout:
            (H, W) gray, (H, W, C) colour, or (Z, Y, X[, C]) stacks for TIFF.

    Returns:
        The pixel array (uint8, uint16, float, ... as stored).

    Raises:
        DatasetError: The file is missing.
        ImageReadError: The file is truncated, damaged, not an image or of an unknown format.
    """
    import cv2

    path = Path(path)
    fmt = check_image_file(path, "image")
    if fmt == "TIFF":
        array = read_tiff(path, "image")
        if rgb:
            array = to_rgb_uint8(array, path)
        return array
    _verify_with_pil(path, "image", fmt)
    flag = cv2.IMREAD_COLOR if rgb else cv2.IMREAD_UNCHANGED
    with _quiet_libraries():
        # imdecode on the raw bytes instead of imread: works with any file name (spaces, unicode).
        array = cv2.imdecode(np.fromfile(path, dtype=np.uint8), flag)
    if array is None:
        raise _decode_error(path, "image", fmt, ValueError("OpenCV could not decode it"))
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA)
    return array


def _verify_with_pil(path: Path, role: str, fmt: str) -> None:
    """Check a PNG's chunk checksums and completeness with PIL (cheap: no pixel decoding), so a
    damaged or truncated PNG gets a clear error before OpenCV prints libpng complaints."""
    if fmt != "PNG":
        return
    from PIL import Image

    try:
        with _quiet_libraries(), Image.open(path) as img:
            img.verify()
    except Exception as exc:  # PIL raises OSError, SyntaxError, struct.error, ...
        raise _decode_error(path, role, fmt, exc) from exc


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask or label file as stored (palette PNGs give their indices, not colours).

    Args:
        path: Mask/label file (TIFF, PNG, BMP, ...).

    Returns:
        Integer array: (H, W), (Z, Y, X) for label stacks, or (H, W, C) for colour masks.

    Raises:
        DatasetError: The file is missing.
        ImageReadError: The file is truncated, damaged, not an image or of an unknown format.
    """
    path = Path(path)
    fmt = check_image_file(path, "mask/label")
    if fmt == "TIFF":
        return read_tiff(path, "mask/label")
    from PIL import Image

    _verify_with_pil(path, "mask/label", fmt)
    try:
        with _quiet_libraries(), Image.open(path) as img:
            # PIL keeps palette indices ("P" mode) and 16-bit PNGs, which OpenCV would not.
            return np.asarray(img)
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise _decode_error(path, "mask/label", fmt, exc) from exc


def read_tiff(path: Path, role: str) -> np.ndarray:
    """A TIFF file as an array; any failure is one :class:`ImageReadError` naming ``role``."""
    import tifffile

    try:
        with _quiet_libraries():
            return np.asarray(tifffile.imread(path))
    except Exception as exc:  # tifffile raises ValueError, OSError, TiffFileError, ...
        raise _decode_error(path, role, "TIFF", exc) from exc


def to_rgb_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    """An 8-bit gray or RGB(A) image as (H, W, 3) uint8 (benchmark photos); else DatasetError."""
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise DatasetError(f"{path} has shape {array.shape}; expected an RGB or gray 2D image")
    if array.dtype != np.uint8:
        raise DatasetError(f"{path} is {array.dtype}; benchmark images must be 8-bit RGB")
    return np.ascontiguousarray(array[..., :3])
