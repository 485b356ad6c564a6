"""User-facing error types: each message says what went wrong and what to do next.

Bugs (broken internal invariants) are not RitmErrors; they keep their tracebacks.
"""

from __future__ import annotations


class RitmError(Exception):
    """Base class of every error caused by user input, files or the environment."""


class CheckpointError(RitmError):
    """A checkpoint file is missing, corrupted, unsafe, or of another architecture."""


class WeightsNotFoundError(RitmError):
    """Model weights could not be found locally nor downloaded."""


class ImageFormatError(RitmError):
    """An image, mask or click does not have a shape, dtype or value the tool can use."""


class DatasetError(RitmError):
    """A dataset folder is empty, malformed, or holds images and labels that do not match."""


class ImageReadError(DatasetError):
    """An image, mask or label file cannot be read: truncated, damaged, not an image, or of a
    format napari-ritm does not read. The message names the file, the problem and the fix."""
