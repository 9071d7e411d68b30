"""Tiny seeded bf16 WAN models with the real ComfyUI `WanModel` key structure, one per variant.

dim 256 (a multiple of 128, so ComfyUI's detection gives whole heads), ffn 512, 2 blocks, text_dim 4096 and
freq_dim 256 as ComfyUI hard-codes them. Linear weights have rows of varying scale, like trained weights.
"""

import functools
import zlib
from dataclasses import dataclass

import torch

TEXT_DIM = 4096  # umT5-XXL width, hard-coded by ComfyUI's WAN detection
FREQ_DIM = 256
CLIP_DIM = 1280  # img_emb input (CLIP ViT-H)


@dataclass(frozen=True)
class TinyWan:
    """Structure of one tiny WAN model. `variant` is the id the fixture stands for (its ground truth)."""

    variant: str
    in_dim: int = 16
    out_dim: int = 16
    i2v_cross_attn: bool = False  # k_img / v_img / norm_k_img in every block
    img_emb: bool = False  # CLIP MLPProj (Wan2.1 I2V / FLF2V)
    emb_pos_tokens: int = 0  # FLF2V `img_emb.emb_pos`
    vace_layers: int = 0
    vace_in_dim: int = 96
    filename_tag: str = ""  # e.g. `high_noise` for an A14B expert
    dim: int = 256
    ffn_dim: int = 512
    num_layers: int = 2


TINY_VARIANTS = {
    v.variant: v
    for v in (
        TinyWan("wan2.1-t2v-1.3b"),
        TinyWan("wan2.1-t2v-14b"),
        TinyWan("wan2.1-i2v-14b", in_dim=36, i2v_cross_attn=True, img_emb=True),
        TinyWan("wan2.1-flf2v-14b", in_dim=36, i2v_cross_attn=True, img_emb=True, emb_pos_tokens=514),
        TinyWan("wan2.2-ti2v-5b", in_dim=48, out_dim=48),
        TinyWan("wan2.2-t2v-a14b", filename_tag="high_noise"),
        TinyWan("wan2.2-i2v-a14b", in_dim=36, filename_tag="low_noise"),
        TinyWan("wan2.1-vace-14b", vace_layers=1),
    )
}
DEFAULT_VARIANT = "wan2.2-ti2v-5b"


def _block_linears(c: TinyWan, group: str, index: int) -> dict[str, tuple[int, int]]:
    d, f = c.dim, c.ffn_dim
    base = f"{group}.{index}"
    shapes = {f"{base}.{attn}.{p}": (d, d) for attn in ("self_attn", "cross_attn") for p in "qkvo"}
    if c.i2v_cross_attn and group == "blocks":
        shapes |= {f"{base}.cross_attn.k_img": (d, d), f"{base}.cross_attn.v_img": (d, d)}
    shapes |= {f"{base}.ffn.0": (f, d), f"{base}.ffn.2": (d, f)}
    if group == "vace_blocks":
        shapes |= {f"{base}.before_proj": (d, d)} if index == 0 else {}
        shapes |= {f"{base}.after_proj": (d, d)}
    return shapes


def linear_shapes(c: TinyWan) -> dict[str, tuple[int, int]]:
    """Every Linear of the tiny model: name (no prefix) -> (out_features, in_features)."""
    d = c.dim
    shapes = {
        "text_embedding.0": (d, TEXT_DIM),
        "text_embedding.2": (d, d),
        "time_embedding.0": (d, FREQ_DIM),
        "time_embedding.2": (d, d),
        "time_projection.1": (6 * d, d),
        "head.head": (4 * c.out_dim, d),
    }
    for i in range(c.num_layers):
        shapes |= _block_linears(c, "blocks", i)
    for i in range(c.vace_layers):
        shapes |= _block_linears(c, "vace_blocks", i)
    if c.img_emb:
        shapes |= {"img_emb.proj.1": (CLIP_DIM, CLIP_DIM), "img_emb.proj.3": (d, CLIP_DIM)}
    return shapes


def _other_shapes(c: TinyWan) -> dict[str, tuple[int, ...]]:
    """Every non-Linear tensor (norms, modulation, convolutions, biases of non-Linears)."""
    d = c.dim
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (d, c.in_dim, 1, 2, 2),
        "patch_embedding.bias": (d,),
        "head.modulation": (1, 2, d),
    }
    groups = [("blocks", i) for i in range(c.num_layers)] + [("vace_blocks", i) for i in range(c.vace_layers)]
    for group, i in groups:
        b = f"{group}.{i}"
        norms = ["self_attn.norm_q", "self_attn.norm_k", "cross_attn.norm_q", "cross_attn.norm_k"]
        if c.i2v_cross_attn and group == "blocks":
            norms.append("cross_attn.norm_k_img")
        shapes |= {f"{b}.{n}.weight": (d,) for n in norms}
        shapes |= {f"{b}.norm3.weight": (d,), f"{b}.norm3.bias": (d,), f"{b}.modulation": (1, 6, d)}
    if c.img_emb:
        shapes |= {"img_emb.proj.0.weight": (CLIP_DIM,), "img_emb.proj.0.bias": (CLIP_DIM,)}
        shapes |= {"img_emb.proj.4.weight": (d,), "img_emb.proj.4.bias": (d,)}
    if c.emb_pos_tokens:
        shapes["img_emb.emb_pos"] = (1, c.emb_pos_tokens, CLIP_DIM)
    if c.vace_layers:
        shapes["vace_patch_embedding.weight"] = (d, c.vace_in_dim, 1, 2, 2)
        shapes["vace_patch_embedding.bias"] = (d,)
    return shapes


def seeded_generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def _init(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = seeded_generator(seed, name)
    if name.endswith(".weight") and len(shape) == 2:  # Linear: rows of varying scale, like trained weights
        rows = torch.exp(0.5 * torch.randn(shape[0], 1, generator=g))
        return torch.randn(shape, generator=g) * rows / shape[1] ** 0.5
    if (".norm" in name and name.endswith(".weight")) or (
        name.startswith("img_emb.proj.") and len(shape) == 1
    ):
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    return 0.05 * torch.randn(shape, generator=g)


@functools.lru_cache(maxsize=16)
def _tiny_wan_state_dict(variant: str, seed: int) -> dict[str, torch.Tensor]:
    c = TINY_VARIANTS[variant]
    shapes = {
        f"{n}.{role}": s if role == "weight" else (s[0],)
        for n, s in linear_shapes(c).items()
        for role in ("weight", "bias")
    }
    shapes |= _other_shapes(c)
    return {k: _init(k, shapes[k], seed).to(torch.bfloat16) for k in sorted(shapes)}


def tiny_wan_state_dict(variant: str = DEFAULT_VARIANT, seed: int = 0) -> dict[str, torch.Tensor]:
    """The seeded bf16 state dict of the tiny model of `variant` (ComfyUI names, no prefix; a fresh copy)."""
    return {k: t.clone() for k, t in _tiny_wan_state_dict(variant, seed).items()}
