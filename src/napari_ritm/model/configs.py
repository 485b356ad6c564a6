"""Architecture table of the RITM HRNet+OCR variants and the official constructor parameters.

A variant is data, not a subclass: the three released backbones differ only in HRNet width,
OCR width and whether the "small" (2 blocks per branch, fewer modules) layout is used.
"""

from __future__ import annotations

import copy
from typing import Any

#: Variant name -> HRNet width, OCR width and the small layout flag (ritm-reference §1.1).
VARIANTS: dict[str, dict[str, Any]] = {
    "hrnet18s": {"width": 18, "ocr_width": 48, "small": True},
    "hrnet18": {"width": 18, "ocr_width": 64, "small": False},
    "hrnet32": {"width": 32, "ocr_width": 128, "small": False},
}

#: Class name the official loader rebuilds from a checkpoint's config.
OFFICIAL_MODEL_CLASS = "isegm.model.is_hrnet_model.HRNetModel"

#: Disk radius of the click encoding, in pixels of the network input.
NORM_RADIUS = 5

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def variant_name(width: int, ocr_width: int, small: bool) -> str:
    """Registry name of an architecture; KeyError if it is not a RITM variant."""
    for name, spec in VARIANTS.items():
        if (spec["width"], spec["ocr_width"], bool(spec["small"])) == (
            width,
            ocr_width,
            bool(small),
        ):
            return name
    raise KeyError(f"no RITM variant with width={width}, ocr_width={ocr_width}, small={small}")


def official_config(variant: str, *, with_prev_mask: bool = True) -> dict[str, Any]:
    """The ``config`` entry the official code stores in a checkpoint for this architecture.

    One entry per constructor argument of ``HRNetModel`` and its base class (18 in all); the
    arguments the official training configs pass explicitly are marked ``specified``.
    """
    spec = VARIANTS[variant]

    def builtin(value: Any, specified: bool) -> dict[str, Any]:
        return {"type": "builtin", "value": value, "specified": specified}

    # Order as the official configs write it: the explicitly passed arguments first.
    specified: dict[str, Any] = {"width": spec["width"], "ocr_width": spec["ocr_width"]}
    if spec["small"]:
        specified["small"] = True
    specified.update(
        with_aux_output=True,
        use_leaky_relu=True,
        use_rgb_conv=False,
        use_disks=True,
        norm_radius=NORM_RADIUS,
        with_prev_mask=with_prev_mask,
    )
    params = {name: builtin(value, True) for name, value in specified.items()}
    if not spec["small"]:
        params["small"] = builtin(False, False)
    params["backbone_lr_mult"] = builtin(0.1, False)
    params["norm_layer"] = {
        "type": "class",
        "value": "torch.nn.modules.batchnorm.BatchNorm2d",
        "specified": False,
    }
    for name, value in (
        ("cpu_dist_maps", False),
        ("clicks_groups", None),
        ("binary_prev_mask", False),
        ("conv_extend", False),
        ("norm_mean_std", (list(IMAGENET_MEAN), list(IMAGENET_STD))),
    ):
        params[name] = builtin(value, False)
    return {"class": OFFICIAL_MODEL_CLASS, "params": copy.deepcopy(params)}
