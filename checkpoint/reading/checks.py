"""Per-layer checks of a classified checkpoint: missing or extra scales, bad dtypes or shapes, bad values.

Only small tensors are read (scalar and per-row scales). Block scales (1/32 of an nvfp4 weight) are scanned
only when asked (`scan_block_scales`); the packed weights are never read.
"""

import torch

from ...kernels import LINEAR, NVFP4_BLOCK, SWIZZLED, swizzled_shape
from ..layers import FLOAT, FP8, FP8_SCALED, GLOBAL_SCALE_RULES, NVFP4, LayerSpec, global_scale_rule
from ..problems import ERROR, WARNING, Problem
from .stream_read import read_tensor

SMALL_TENSOR_ELEMENTS = 1 << 20  # per-row scales of any WAN layer are far below this
BLOCK_SCALE_DTYPES = (torch.float8_e4m3fn, torch.uint8)
E4M3_NAN_BYTES = (0x7F, 0xFF)
MIN_SUSPECT_BYTE = 0x7F  # bytes >= 0x7F are NaN, -0 or negative e4m3 values


def _shape(source, key: str) -> list[int]:
    return list(source.shape(key))


def tensor_numel(source, key: str) -> int:
    """Elements of tensor `key` from its header shape (nothing read)."""
    n = 1
    for d in source.shape(key):
        n *= d
    return n


def _values_problems(source, spec: LayerSpec, role: str, severity: str, what: str) -> list[Problem]:
    """NaN/Inf, zero and negative values of a small scale tensor."""
    key = spec.tensors[role]
    if tensor_numel(source, key) > SMALL_TENSOR_ELEMENTS or not source.dtype(key).is_floating_point:
        return []
    values = source.tensor(key).float()
    bad = {
        "NaN or Inf": ~torch.isfinite(values),
        "zero": values == 0,
        "negative": values < 0,
    }
    out = []
    for name, mask in bad.items():
        count = int(mask.sum())
        if count:
            found = f"{count} {name} value(s) in {key}" + (
                f" (first: {values.flatten()[mask.flatten()][0].item()})" if name != "NaN or Inf" else ""
            )
            out.append(Problem(severity, f"{what} is {name}", spec.key, "finite positive values", found))
    return out


def _scalar_problems(source, spec: LayerSpec, role: str, what: str, severity: str = ERROR) -> list[Problem]:
    key = spec.tensors[role]
    out = []
    if not source.dtype(key).is_floating_point:
        out.append(
            Problem(severity, f"{what} has an unexpected dtype", spec.key, "float32", str(source.dtype(key)))
        )
    if tensor_numel(source, key) != 1:
        out.append(
            Problem(
                severity,
                f"{what} is not a scalar",
                spec.key,
                "1 element ([] or [1])",
                f"shape {_shape(source, key)}",
            )
        )
    return out or _values_problems(source, spec, role, severity, what)


def _block_scale_problems(source, spec: LayerSpec, scan: bool) -> list[Problem]:
    key = spec.tensors["block_scale"]
    dtype = source.dtype(key)
    if dtype not in BLOCK_SCALE_DTYPES:
        return [
            Problem(
                ERROR,
                "block scale (weight_scale) has the wrong dtype",
                spec.key,
                "float8_e4m3fn (or its uint8 bytes)",
                str(dtype),
            )
        ]
    rows, cols = spec.out_features, spec.in_features // NVFP4_BLOCK
    want = swizzled_shape(rows, cols) if spec.scale_layout == SWIZZLED else (rows, cols)
    found = tuple(source.shape(key))
    flat_ok = spec.scale_layout == SWIZZLED and len(found) == 1 and found[0] == want[0] * want[1]
    if found != want and not flat_ok:
        return [
            Problem(
                ERROR,
                f"block scale (weight_scale) shape does not fit the {spec.scale_layout} layout",
                spec.key,
                f"{list(want)} for a [{rows}, {spec.in_features}] weight",
                str(list(found)),
            )
        ]
    if not scan:
        return []
    raw = read_tensor(source, key).view(torch.uint8).reshape(-1)  # private copy: no file pages kept
    if spec.scale_layout == LINEAR:
        logical = raw
    else:
        logical = raw.reshape(want)[:rows, :cols] if len(found) == 2 else raw  # padding is zero or ignored
    if logical.numel() == 0 or int(logical.amax()) < MIN_SUSPECT_BYTE:
        return []  # every byte a finite non-negative e4m3 value: one fast pass instead of three counts
    out = []
    nan = int(sum((logical == b).sum() for b in E4M3_NAN_BYTES))
    if nan:
        out.append(
            Problem(
                ERROR,
                "block scales contain NaN",
                spec.key,
                "finite e4m3 block scales",
                f"{nan} NaN byte(s) (0x7f/0xff) in {key}",
            )
        )
    negative = int(((logical & 0x80) != 0).logical_and((logical & 0x7F) != 0).sum())
    if negative:
        out.append(
            Problem(
                ERROR,
                "block scales are negative",
                spec.key,
                "non-negative e4m3 block scales",
                f"{negative} negative value(s) in {key}",
            )
        )
    return out


def check_nvfp4(source, spec: LayerSpec, scan_block_scales: bool = False) -> list[Problem]:
    out = []
    rows = source.shape(spec.tensors["weight"])[0]
    if spec.in_features % NVFP4_BLOCK:
        out.append(
            Problem(
                ERROR,
                "in_features (K) is not a multiple of 16",
                spec.key,
                "K a multiple of 16 (packed columns a multiple of 8)",
                f"K = {spec.in_features}",
            )
        )
    if "bias" in spec.tensors and tensor_numel(source, spec.tensors["bias"]) not in (rows, spec.out_features):
        out.append(
            Problem(
                ERROR,
                "bias size does not match the weight's rows",
                spec.key,
                f"{spec.out_features}",
                f"{tensor_numel(source, spec.tensors['bias'])}",
            )
        )
    if "block_scale" not in spec.tensors:
        out.append(
            Problem(
                ERROR,
                "missing block scales",
                spec.key,
                f"{spec.key}.weight_scale (float8_e4m3fn)",
                "no such tensor",
            )
        )
    elif not out:
        out += _block_scale_problems(source, spec, scan_block_scales)
    rule = global_scale_rule(spec)
    if rule is not None:
        roles, description, _ = rule
        for role in roles:
            out += _scalar_problems(source, spec, role, f"second-level scale ({description}: {role})")
    else:
        partial = sorted(r for roles, _, _ in GLOBAL_SCALE_RULES for r in roles if r in spec.tensors)
        found = f"only {', '.join(partial)}" if partial else "none of them"
        expected = f"{spec.key}." + ", or ".join(description for _, description, _ in GLOBAL_SCALE_RULES)
        out.append(
            Problem(ERROR, "missing the second-level scale", spec.key, f"{expected} (fp32 scalars)", found)
        )
    if "input_scale" in spec.tensors:
        out += _scalar_problems(source, spec, "input_scale", "activation scale (input_scale)", WARNING)
    if "pre_quant_scale" in spec.tensors:
        out.append(
            Problem(
                ERROR,
                "AWQ pre_quant_scale is not supported",
                spec.key,
                "nvfp4 weights without pre_quant_scale",
                spec.tensors["pre_quant_scale"],
            )
        )
    return out


def check_fp8(source, spec: LayerSpec, scan_block_scales: bool = False) -> list[Problem]:
    out = []
    if spec.format == FP8_SCALED:
        key = spec.tensors["scale"]
        n = spec.out_features
        shape = tuple(source.shape(key))
        if not source.dtype(key).is_floating_point:
            out.append(
                Problem(
                    ERROR, "fp8 scale has an unexpected dtype", spec.key, "float32", str(source.dtype(key))
                )
            )
        elif tensor_numel(source, key) != 1 and shape not in ((n,), (n, 1)):
            what = (
                "2-D block-wise fp8 scales are not supported"
                if len(shape) == 2
                else "fp8 scale has the wrong shape"
            )
            out.append(
                Problem(
                    ERROR,
                    what,
                    spec.key,
                    f"[] or [1] (per tensor), [{n}] or [{n}, 1] (per row)",
                    str(list(shape)),
                )
            )
        else:
            out += _values_problems(source, spec, "scale", ERROR, "fp8 weight scale")
    for role in ("input_scale", "scale_input"):
        if role in spec.tensors:
            out += _scalar_problems(source, spec, role, f"activation scale ({role})", WARNING)
    return out


def check_float(source, spec: LayerSpec, scan_block_scales: bool = False) -> list[Problem]:
    return []


CHECKS = {NVFP4: check_nvfp4, FP8_SCALED: check_fp8, FP8: check_fp8, FLOAT: check_float}


def check_layer(source, spec: LayerSpec, scan_block_scales: bool = False) -> list[Problem]:
    """Every problem of one classified layer."""
    return CHECKS[spec.format](source, spec, scan_block_scales)
