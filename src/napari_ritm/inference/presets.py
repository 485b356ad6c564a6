"""Session presets and the shared constants of the inference path.

This module imports neither torch nor the model, so evaluation code and the widget can read
the constants cheaply.
"""

from __future__ import annotations

__all__ = ["DEFAULT_THRESHOLD"]

#: THE mask threshold: ``mask = probs > DEFAULT_THRESHOLD``, as the reference evaluation
#: (ritm-reference §9.1). Session, evaluation and widget all use this one number.
DEFAULT_THRESHOLD: float = 0.49
