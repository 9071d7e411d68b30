"""Our weights as ComfyUI `QuantizedTensor`s: two layouts registered in comfy's layout registry.

A Linear's weight is `QuantizedTensor(stored bytes, layout, Params(scales, conventions))`, exactly as read
from the file (no conversion). ComfyUI's offload code then treats it like its own quantized weights:
`.to(dtype)` only changes the logical dtype, legacy lowvram and Dynamic VRAM move the inner tensors byte-wise
(`__tensor_flatten__`), `cast_bias_weight` dequantizes before LoRA weight functions, and `state_dict()`
writes the file's tensor names back. Dequantizing goes through the pack's kernels (`kernels.ops`).

    WanNVFP4Layout: qdata uint8 packed codes; Params.scale = weight_scale_2 (fp32), block_scale e4m3,
                    nibble_order / scale_layout as stored, dequant_path
    WanFP8Layout:   qdata fp8; Params.scale fp32 per tensor (1 element) or per row (N); has_scale False for
                    plain fp8 (scale is then a stored 1.0 that is never applied)
"""

import dataclasses
from dataclasses import dataclass

import comfy.float
import torch
from comfy.quant_ops import QuantizedLayout, QuantizedTensor, register_layout_class
from comfy_kitchen.tensor.base import BaseLayoutParams

from ..checkpoint.layers import CONVENTIONS_SUFFIX, FULL_PRECISION_MM
from ..kernels import (
    HIGH_FIRST,
    LINEAR,
    LOW_FIRST,
    SWIZZLED,
    FP8Weight,
    NVFP4Weight,
    from_blocked,
    nvfp4_global_scale,
    quantize_nvfp4,
    swap_nibbles,
    swizzled_shape,
)
from ..kernels import ops as kernel_ops
from ..kernels.dispatch import AUTO
from .native_fp4 import NVFP4_FORMAT, is_native

NVFP4_LAYOUT = "WanNVFP4Layout"
FP8_LAYOUT = "WanFP8Layout"


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] >= rows:
        return t
    return torch.cat([t, t.new_zeros((rows - t.shape[0], *t.shape[1:]))])


class _KernelLayout(QuantizedLayout):
    """Our layouts dequantize through the pack's kernels, from `kernel_weight(qdata, params)`."""

    @classmethod
    def dequantize(cls, qdata, params):
        return kernel_ops.dequantize(cls.kernel_weight(qdata, params), params.orig_dtype, params.dequant_path)


class WanNVFP4Layout(_KernelLayout):
    """NVFP4 in any convention the checkpoint reader knows (both nibble orders, both scale layouts)."""

    @dataclass(frozen=True)
    class Params(BaseLayoutParams):
        block_scale: torch.Tensor
        nibble_order: str = HIGH_FIRST
        scale_layout: str = SWIZZLED
        dequant_path: str = AUTO

        def _tensor_fields(self) -> list[str]:
            return ["scale", "block_scale"]

    @classmethod
    def kernel_weight(cls, qdata: torch.Tensor, params: "WanNVFP4Layout.Params") -> NVFP4Weight:
        n, k = params.orig_shape
        return NVFP4Weight(
            qdata, params.block_scale, params.scale, n, k, params.nibble_order, params.scale_layout
        )

    @classmethod
    def quantize(
        cls,
        tensor,
        scale=None,
        stochastic_rounding=0,
        inplace_ops=False,
        nibble_order=HIGH_FIRST,
        scale_layout=SWIZZLED,
        storage_rows=0,
        dequant_path=AUTO,
        **kwargs,
    ):
        """Quantize `[N, K]` into the given conventions (used when ComfyUI or a merge requantizes)."""
        n, k = tensor.shape
        if scale is None or isinstance(scale, str):
            scale = nvfp4_global_scale(tensor)
        scale = torch.as_tensor(scale, device=tensor.device).float().reshape(())
        if stochastic_rounding:
            packed, block = comfy.float.stochastic_round_quantize_nvfp4_by_block(
                tensor, scale, pad_16x=False, seed=stochastic_rounding
            )
            packed = swap_nibbles(packed) if nibble_order == LOW_FIRST else packed
            block = from_blocked(block, n, k // 16) if scale_layout == LINEAR else block
        else:
            q = quantize_nvfp4(tensor, scale, nibble_order, scale_layout)
            packed, block = q.packed, q.block_scale
        params = cls.Params(
            scale=scale,
            orig_dtype=tensor.dtype,
            orig_shape=(n, k),
            block_scale=block,
            nibble_order=nibble_order,
            scale_layout=scale_layout,
            dequant_path=dequant_path,
        )
        return _pad_rows(packed, storage_rows), params

    @classmethod
    def requantize_kwargs(cls, qtensor):
        p = qtensor._params
        return {
            "nibble_order": p.nibble_order,
            "scale_layout": p.scale_layout,
            "storage_rows": qtensor._qdata.shape[0],
            "dequant_path": p.dequant_path,
        }

    @classmethod
    def get_plain_tensors(cls, qtensor):
        return qtensor._qdata, qtensor._params.scale, qtensor._params.block_scale

    @classmethod
    def state_dict_tensors(cls, qdata, params):
        return {"": qdata, "_scale": params.block_scale, "_scale_2": params.scale}


class WanFP8Layout(_KernelLayout):
    """FP8 (e4m3fn or e5m2) with a per-tensor or per-row fp32 scale, or none."""

    @dataclass(frozen=True)
    class Params(BaseLayoutParams):
        has_scale: bool = True
        dequant_path: str = AUTO

    @classmethod
    def kernel_weight(cls, qdata: torch.Tensor, params: "WanFP8Layout.Params") -> FP8Weight:
        return FP8Weight(qdata, params.scale if params.has_scale else None)

    @classmethod
    def quantize(
        cls,
        tensor,
        scale=None,
        stochastic_rounding=0,
        inplace_ops=False,
        fp8_dtype=torch.float8_e4m3fn,
        per_row=False,
        has_scale=True,
        dequant_path=AUTO,
        **kwargs,
    ):
        """Scale recalculated from the tensor (amax / fp8 max), per row when the original was per row."""
        w = tensor.float()
        fp8_max = torch.finfo(fp8_dtype).max
        if not has_scale:
            scale = torch.ones((), device=w.device)
        elif scale is None or isinstance(scale, str):
            amax = w.abs().amax(dim=1) if per_row else w.abs().amax()
            scale = torch.where(amax > 0, amax / fp8_max, torch.ones_like(amax))
        scale = torch.as_tensor(scale, device=w.device).float()
        scaled = (w / (scale.reshape(-1, 1) if per_row else scale)).clamp(-fp8_max, fp8_max)
        if stochastic_rounding:
            data = comfy.float.stochastic_rounding(scaled, fp8_dtype, seed=stochastic_rounding)
        else:
            data = scaled.to(fp8_dtype)
        params = cls.Params(
            scale=scale,
            orig_dtype=tensor.dtype,
            orig_shape=tuple(tensor.shape),
            has_scale=has_scale,
            dequant_path=dequant_path,
        )
        return data, params

    @classmethod
    def requantize_kwargs(cls, qtensor):
        p = qtensor._params
        return {
            "fp8_dtype": qtensor._qdata.dtype,
            "per_row": p.scale.numel() > 1,
            "has_scale": p.has_scale,
            "dequant_path": p.dequant_path,
        }

    @classmethod
    def get_plain_tensors(cls, qtensor):
        return qtensor._qdata, qtensor._params.scale

    @classmethod
    def state_dict_tensors(cls, qdata, params):
        return {"": qdata, "_scale": params.scale} if params.has_scale else {"": qdata}


LAYOUTS = {NVFP4_LAYOUT: WanNVFP4Layout, FP8_LAYOUT: WanFP8Layout}
for _name, _cls in LAYOUTS.items():
    register_layout_class(_name, _cls)


def quantized_weight(weight, orig_dtype: torch.dtype, dequant_path: str = AUTO) -> QuantizedTensor:
    """Wrap a kernel weight (NVFP4Weight / FP8Weight, tensors as read) as a comfy QuantizedTensor."""
    if isinstance(weight, NVFP4Weight):
        params = WanNVFP4Layout.Params(
            scale=weight.global_scale.float().reshape(()),
            orig_dtype=orig_dtype,
            orig_shape=weight.shape,
            block_scale=weight.block_scale,
            nibble_order=weight.nibble_order,
            scale_layout=weight.scale_layout,
            dequant_path=dequant_path,
        )
        return QuantizedTensor(weight.packed, NVFP4_LAYOUT, params)
    has_scale = weight.scale is not None
    scale = weight.scale.float() if has_scale else torch.ones((), device=weight.data.device)
    params = WanFP8Layout.Params(
        scale=scale,
        orig_dtype=orig_dtype,
        orig_shape=weight.shape,
        has_scale=has_scale,
        dequant_path=dequant_path,
    )
    return QuantizedTensor(weight.data, FP8_LAYOUT, params)


def kernel_weight(qt: QuantizedTensor):
    """The kernels' view (NVFP4Weight / FP8Weight) of one of our QuantizedTensors, sharing its tensors."""
    return LAYOUTS[qt._layout_cls].kernel_weight(qt._qdata, qt._params)


def saved_markers(qt: QuantizedTensor, full_precision_mm: bool = False) -> dict[str, dict]:
    """`_saved_markers(qt)`, with the layer's `full_precision_matrix_mult` kept in its `comfy_quant`."""
    markers = _saved_markers(qt)
    if full_precision_mm and "comfy_quant" in markers:
        markers["comfy_quant"][FULL_PRECISION_MM] = True
    return markers


def _saved_markers(qt: QuantizedTensor) -> dict[str, dict]:
    """Per-layer marker tensors (suffix -> JSON) that `state_dict()` adds, so a model ComfyUI saves reads back
    right: `comfy_quant` for layers converted to ComfyUI's native NVFP4 at load and where vanilla ComfyUI
    reads the stored tensors correctly (as its own ops write it), per-row FP8 as `float8_*_rowwise` (ComfyUI
    refuses it instead of dropping the scale), and NVFP4 in another convention gets this pack's
    `wan_nvfp4_conventions` (vanilla ComfyUI refuses it: size mismatch)."""
    p = qt._params
    if is_native(qt):
        return {"comfy_quant": {"format": NVFP4_FORMAT}}  # what ComfyUI's own ops save for the layer
    if qt._layout_cls == FP8_LAYOUT:
        if not p.has_scale:
            return {}  # plain fp8: ComfyUI upcasts it natively
        fmt = "float8_e4m3fn" if qt._qdata.dtype == torch.float8_e4m3fn else "float8_e5m2"
        return {"comfy_quant": {"format": fmt if p.scale.numel() == 1 else f"{fmt}_rowwise"}}
    n, k = p.orig_shape
    native = (
        (p.nibble_order, p.scale_layout) == (HIGH_FIRST, SWIZZLED)
        and qt._qdata.shape[0] % 16 == 0
        and tuple(p.block_scale.shape) == swizzled_shape(n, k // 16)
    )
    if native:
        return {"comfy_quant": {"format": "nvfp4"}}
    return {CONVENTIONS_SUFFIX: {"nibble_order": p.nibble_order, "scale_layout": p.scale_layout}}


def is_ours(weight) -> bool:
    """True for a weight held in one of this pack's layouts (derived from the weight, never from a flag)."""
    return isinstance(weight, QuantizedTensor) and weight._layout_cls in LAYOUTS


def is_quantized(weight) -> bool:
    """True for a weight the pack's Linear holds quantized: one of our layouts, or ComfyUI's own NVFP4 layout
    for a layer converted at load (`native_fp4`)."""
    return is_ours(weight) or is_native(weight)


def with_orig_dtype(qt: QuantizedTensor, dtype: torch.dtype) -> QuantizedTensor:
    return QuantizedTensor(qt._qdata, qt._layout_cls, dataclasses.replace(qt._params, orig_dtype=dtype))
