"""Group a checkpoint's keys into Linear layers: which tensors belong to which layer, in which role.

A Linear is a stem with a 2-D `.weight`; its format comes from the weight dtype (uint8 -> nvfp4, fp8 with a
`weight_scale`/`scale_weight` -> fp8_scaled, fp8 alone -> fp8, float -> float). Everything here reads key
names, shapes and dtypes only.
"""

import re
from dataclasses import dataclass

import torch

from ..conventions.evidence import layout_from_shape
from ..layers import CONVENTIONS_SUFFIX, FLOAT, FP8, FP8_SCALED, NVFP4
from ..problems import ERROR, WARNING, Problem

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
EXPECTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.uint8, *FP8_DTYPES)

# key suffix -> tensor role (fp8 layers read `weight_scale` as their `scale`)
SUFFIX_ROLES = {
    "weight": "weight",
    "bias": "bias",
    "weight_scale": "block_scale",
    "weight_scale_2": "global_scale",
    "input_scale": "input_scale",
    "scale_weight": "scale",
    "scale_input": "scale_input",
    "alpha": "alpha",
    "input_global_scale": "input_global_scale",
    "weight_global_scale": "inverse_global_scale",
    "input_absmax": "input_absmax",
    "comfy_quant": "comfy_quant",
    "pre_quant_scale": "pre_quant_scale",
    CONVENTIONS_SUFFIX: "conventions",
}
# roles each format uses; anything else attached to the layer is an extra tensor
FORMAT_ROLES = {
    NVFP4: {
        "weight",
        "bias",
        "block_scale",
        "global_scale",
        "input_scale",
        "alpha",
        "input_global_scale",
        "inverse_global_scale",
        "input_absmax",
        "comfy_quant",
        "pre_quant_scale",
        "conventions",
    },
    FP8_SCALED: {"weight", "bias", "scale", "input_scale", "scale_input", "comfy_quant"},
    FP8: {"weight", "bias", "input_scale", "scale_input", "comfy_quant"},
    FLOAT: {"weight", "bias", "comfy_quant"},
}
NOT_LINEAR = ("trainable_cond_mask",)  # 2-D `.weight` of an Embedding (WAN S2V)
SCALE_SUFFIXES = {
    "weight_scale",
    "weight_scale_2",
    "scale_weight",
    "alpha",
    "input_global_scale",
    "weight_global_scale",
}


def natural_key(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def group_keys(keys, prefix: str) -> dict[str, dict[str, str]]:
    """Stem (with prefix) -> {suffix: full key} for keys under the prefix whose suffix has a role."""
    groups: dict[str, dict[str, str]] = {}
    for key in keys:
        if not key.startswith(prefix) or "." not in key:
            continue
        stem, suffix = key.rsplit(".", 1)
        if suffix in SUFFIX_ROLES:
            groups.setdefault(stem, {})[suffix] = key
    return groups


def _is_linear(source, stem: str, parts: dict[str, str], prefix: str) -> bool:
    weight = parts.get("weight")
    if weight is None or len(source.shape(weight)) != 2:
        return False
    return not any(stem[len(prefix) :].startswith(n) for n in NOT_LINEAR)


def _layer_format(source, parts: dict[str, str]) -> str | None:
    dtype = source.dtype(parts["weight"])
    if dtype == torch.uint8:
        return NVFP4
    if dtype in FP8_DTYPES:
        return FP8_SCALED if {"weight_scale", "scale_weight"} & parts.keys() else FP8
    if dtype in FLOAT_DTYPES:
        return FLOAT
    return None


def _roles(fmt: str, parts: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """role -> key for the format, plus the keys the format has no use for."""
    tensors, extra = {}, []
    for suffix, key in sorted(parts.items()):
        role = SUFFIX_ROLES[suffix]
        if fmt in (FP8_SCALED, FP8) and suffix == "weight_scale":
            role = "scale"
        if role in FORMAT_ROLES[fmt] and role not in tensors:
            tensors[role] = key
        else:
            extra.append(key)
    return tensors, extra


def _dims(source, fmt: str, tensors: dict[str, str]) -> tuple[int, int]:
    rows, cols = source.shape(tensors["weight"])
    if fmt != NVFP4:
        return rows, cols
    bias = tensors.get("bias")
    n = source.shape(bias)[0] if bias and len(source.shape(bias)) == 1 else rows
    padded = n <= rows and rows == (n + 15) // 16 * 16  # ComfyUI pads packed rows to a multiple of 16
    return (n if padded else rows), cols * 2


@dataclass
class RawLayer:
    """A Linear before conventions are decided."""

    name: str
    key: str
    format: str
    tensors: dict[str, str]
    out_features: int
    in_features: int
    shape_layout: str | None


def discover_layers(source, prefix: str, problems: list[Problem]) -> dict[str, RawLayer]:
    raws: dict[str, RawLayer] = {}
    for stem, parts in sorted(group_keys(source.keys(), prefix).items(), key=lambda kv: natural_key(kv[0])):
        name = stem[len(prefix) :]
        if not _is_linear(source, stem, parts, prefix):
            orphans = sorted(parts[s] for s in SCALE_SUFFIXES & parts.keys())
            if orphans:
                problems.append(
                    Problem(
                        WARNING,
                        "scale tensors without a 2-D weight (ignored)",
                        stem,
                        f"{stem}.weight",
                        ", ".join(orphans),
                    )
                )
            continue
        fmt = _layer_format(source, parts)
        if fmt is None:
            dtype = str(source.dtype(parts["weight"])).removeprefix("torch.")
            problems.append(
                Problem(
                    ERROR, "unsupported weight dtype", stem, "uint8 (nvfp4), float8 or a float dtype", dtype
                )
            )
            continue
        tensors, extra = _roles(fmt, parts)
        if extra:
            problems.append(
                Problem(
                    WARNING,
                    f"extra tensors on a {fmt} layer (ignored)",
                    stem,
                    f"only the tensors a {fmt} layer uses",
                    ", ".join(extra),
                )
            )
        out_features, in_features = _dims(source, fmt, tensors)
        shape_layout = None
        if fmt == NVFP4 and "block_scale" in tensors:
            shape_layout = layout_from_shape(out_features, in_features, source.shape(tensors["block_scale"]))
        raws[name] = RawLayer(name, stem, fmt, tensors, out_features, in_features, shape_layout)
    return raws
