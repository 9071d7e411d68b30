"""Signal-to-quantization-noise ratio in dB: how far a dequantized weight (or output) is from its source."""

import math

import torch


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """`10 log10(|ref|² / |ref - approx|²)` in fp32 (inf when identical, -inf for a zero reference)."""
    ref = reference.detach().float()
    err = ref - approx.detach().float().to(ref.device)
    signal = float(torch.linalg.vector_norm(ref)) ** 2
    noise = float(torch.linalg.vector_norm(err)) ** 2
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def chunked_sqnr_db(reference: torch.Tensor, approx: torch.Tensor, rows_per_chunk: int = 1024) -> float:
    """`sqnr_db` over row chunks (fp64 sums of fp32 chunk norms): no full-size fp32 temporaries."""
    signal = noise = 0.0
    for a in range(0, reference.shape[0], rows_per_chunk):
        ref = reference[a : a + rows_per_chunk].float()
        signal += float(torch.linalg.vector_norm(ref)) ** 2
        noise += float(torch.linalg.vector_norm(ref - approx[a : a + rows_per_chunk].float())) ** 2
    if noise == 0.0:
        return math.inf
    return -math.inf if signal == 0.0 else 10.0 * math.log10(signal / noise)


def relative_error(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """`|ref - approx| / |ref|` (Frobenius); equals 10^(-SQNR/20)."""
    ref = reference.detach().float()
    denom = float(torch.linalg.vector_norm(ref))
    num = float(torch.linalg.vector_norm(ref - approx.detach().float().to(ref.device)))
    return num / denom if denom else math.inf


def db_to_relative_error(db: float) -> float:
    """The relative (Frobenius) error a given SQNR implies."""
    return 10.0 ** (-db / 20.0)


def format_db(db: float) -> str:
    return "exact" if db == math.inf else f"{db:.2f}"
