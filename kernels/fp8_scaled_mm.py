"""Opt-in FP8 fast path: activations quantized to float8_e4m3fn per row, FP8 weight, `torch._scaled_mm`.

Lossy (the activations lose precision: ~2^-4 relative per element); 2x the bf16 tensor-core rate on
sm_89 / sm_90. The weight's per-tensor or per-row scale and the per-row activation scale are applied by
`_scaled_mm`'s rowwise epilogue. Only `fp8-scaled-mm` in dispatch.CONSTRAINTS says where it may run.
"""

import torch

from .weights import FP8Weight

E4M3_MAX = 448.0
_TINY = 1e-12  # floor for all-zero rows


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`x [M, K]` -> (float8_e4m3fn codes, fp32 scale `[M, 1]`) with `x ~= codes * scale` per row."""
    amax = x.abs().amax(dim=1, keepdim=True).float().clamp(min=_TINY)
    scale = amax / E4M3_MAX
    codes = (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return codes, scale


def _weight_scale_row(w: FP8Weight, device: torch.device) -> torch.Tensor:
    """The weight scale as the `[1, N]` fp32 row `_scaled_mm` wants for rowwise scaling."""
    n = w.out_features
    if w.scale is None:
        return torch.ones((1, n), dtype=torch.float32, device=device)
    scale = w.scale.float().reshape(1, -1)
    return scale.expand(1, n).contiguous() if scale.numel() == 1 else scale.contiguous()


def linear(x: torch.Tensor, w: FP8Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`x [M, K] @ W.T + bias` with FP8 activations; output in x's dtype (bf16 on GPUs)."""
    if w.data.dtype != torch.float8_e4m3fn:
        raise ValueError(f"fp8-scaled-mm needs a float8_e4m3fn weight, found {w.data.dtype}")
    codes, scale_a = quantize_rows(x)
    y = torch._scaled_mm(
        codes, w.data.t(), scale_a=scale_a, scale_b=_weight_scale_row(w, x.device), out_dtype=x.dtype
    )
    return y if bias is None else y.add_(bias.to(y.dtype))
