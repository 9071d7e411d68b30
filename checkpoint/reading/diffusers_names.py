"""Diffusers `WanTransformer3DModel` tensor names <-> ComfyUI `WanModel` names: one table, both directions.

Read from huggingface/diffusers @ 58eb52c0803ea9af3abec60841c2a093bdf1f951:
- `scripts/convert_wan_to_diffusers.py` `TRANSFORMER_KEYS_RENAME_DICT` / `VACE_TRANSFORMER_KEYS_RENAME_DICT`
  (original WAN names -> diffusers; applied there as sequential `str.replace`, which also turns
  `cross_attn.k_img` into `attn2.add_k_proj` and swaps `norm2`/`norm3`);
- `src/diffusers/loaders/single_file_utils.py` `convert_wan_transformer_to_diffusers` (the same table for
  ComfyUI single files, `model.diffusion_model.` stripped);
- `src/diffusers/models/transformers/transformer_wan.py`: `WanAttention.fuse_projections` (fused
  `to_qkv` = cat(q, k, v) for self-attention, `to_kv` = cat(k, v) for cross-attention, `to_added_kv` =
  cat(add_k_proj, add_v_proj)), and `_keys_to_ignore_on_load_unexpected = ["norm_added_q"]`.

Here the table is written once as (ComfyUI stem, diffusers stem) pairs, block-relative where it applies to
`blocks.N` / `vace_blocks.N`. A key is a stem plus one tensor role (`weight`, `bias` and the ModelOpt roles
`weight_scale`, `weight_scale_2`, `input_scale`, `pre_quant_scale`), or a bare parameter stem
(`scale_shift_table`, `pos_embed`). Anything else maps to nothing (`None`): the caller reports it.
"""

import re

# ComfyUI stem -> diffusers stem, outside the blocks
TOP_LEVEL = (
    ("patch_embedding", "patch_embedding"),
    ("vace_patch_embedding", "vace_patch_embedding"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("head.head", "proj_out"),
    ("head.modulation", "scale_shift_table"),  # a bare parameter
    ("img_emb.proj.0", "condition_embedder.image_embedder.norm1"),  # I2V / FLF2V CLIP MLPProj
    ("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj"),
    ("img_emb.proj.3", "condition_embedder.image_embedder.ff.net.2"),
    ("img_emb.proj.4", "condition_embedder.image_embedder.norm2"),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),  # FLF2V, a bare parameter
)

# ComfyUI stem -> diffusers stem inside `blocks.N.` and `vace_blocks.N.`
IN_BLOCK = (
    ("self_attn.q", "attn1.to_q"),
    ("self_attn.k", "attn1.to_k"),
    ("self_attn.v", "attn1.to_v"),
    ("self_attn.o", "attn1.to_out.0"),
    ("self_attn.norm_q", "attn1.norm_q"),
    ("self_attn.norm_k", "attn1.norm_k"),
    ("cross_attn.q", "attn2.to_q"),
    ("cross_attn.k", "attn2.to_k"),
    ("cross_attn.v", "attn2.to_v"),
    ("cross_attn.o", "attn2.to_out.0"),
    ("cross_attn.norm_q", "attn2.norm_q"),
    ("cross_attn.norm_k", "attn2.norm_k"),
    ("cross_attn.k_img", "attn2.add_k_proj"),  # Wan 2.1 I2V / FLF2V image cross-attention
    ("cross_attn.v_img", "attn2.add_v_proj"),
    ("cross_attn.norm_k_img", "attn2.norm_added_k"),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
    ("norm3", "norm2"),  # WAN's cross-attention norm is `norm3`; diffusers calls it `norm2`
    ("modulation", "scale_shift_table"),  # a bare parameter
)
IN_VACE_BLOCK = (("before_proj", "proj_in"), ("after_proj", "proj_out"))

# fused diffusers projection (block-relative) -> the ComfyUI stems it concatenates along rows, in order
FUSED = {
    "attn1.to_qkv": ("self_attn.q", "self_attn.k", "self_attn.v"),
    "attn2.to_kv": ("cross_attn.k", "cross_attn.v"),
    "attn2.to_added_kv": ("cross_attn.k_img", "cross_attn.v_img"),
}

# diffusers stems that diffusers itself drops on load (`_keys_to_ignore_on_load_unexpected`), block-relative
IGNORED = ("attn2.norm_added_q",)

ROLES = ("weight", "bias", "weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale")
BARE_PARAMETERS = {"head.modulation", "img_emb.emb_pos", "modulation"}
BLOCK_GROUPS = ("blocks", "vace_blocks")
_BLOCK = re.compile(r"^(blocks|vace_blocks)\.(\d+)\.(.+)$")

WAN_DIFFUSERS_CLASSES = ("WanTransformer3DModel", "WanVACETransformer3DModel")


def _tables(group: str | None) -> tuple[tuple[str, str], ...]:
    if group is None:
        return TOP_LEVEL
    return IN_BLOCK + (IN_VACE_BLOCK if group == "vace_blocks" else ())


def _split_block(key: str) -> tuple[str, str, str]:
    """(`blocks.N.`, group, rest) for a block key, else ("", None, key)."""
    m = _BLOCK.match(key)
    return (f"{m[1]}.{m[2]}.", m[1], m[3]) if m else ("", None, key)


def _map(key: str, table, src: int, dst: int) -> str | None:
    for pair in table:
        stem = pair[src]
        if key == stem:
            return pair[dst] if pair[0] in BARE_PARAMETERS else None
        if key.startswith(stem + ".") and key[len(stem) + 1 :] in ROLES and pair[0] not in BARE_PARAMETERS:
            return pair[dst] + key[len(stem) :]
    return None


def comfy_key(diffusers_key: str) -> str | None:
    """The ComfyUI WAN name of one (unfused) diffusers tensor, or None when it maps to nothing."""
    head, group, rest = _split_block(diffusers_key)
    mapped = _map(rest, _tables(group), 1, 0)
    return None if mapped is None else head + mapped


def diffusers_key(comfy: str) -> str | None:
    """The diffusers name of one ComfyUI WAN tensor (the inverse of `comfy_key`), or None."""
    head, group, rest = _split_block(comfy)
    mapped = _map(rest, _tables(group), 0, 1)
    return None if mapped is None else head + mapped


def fused_parts(diffusers_key: str) -> tuple[str, ...] | None:
    """For a fused projection tensor (`blocks.N.attn1.to_qkv.weight`, ...): the ComfyUI keys of its row
    parts, in order. None when the key is not a fused projection."""
    head, group, rest = _split_block(diffusers_key)
    if group is None:
        return None
    stem, _, role = rest.rpartition(".")
    if stem not in FUSED or role not in ROLES:
        return None
    return tuple(f"{head}{part}.{role}" for part in FUSED[stem])


def is_ignored(diffusers_key: str) -> bool:
    """A tensor diffusers itself drops on load (`norm_added_q`): accounted for, not loaded."""
    _, group, rest = _split_block(diffusers_key)
    return group is not None and any(rest == s + ".weight" or rest == s for s in IGNORED)


def fuse_group(comfy: str) -> tuple[str, str, int] | None:
    """(fused diffusers stem incl. block, role, index) when `comfy` is one part of a fusable projection."""
    head, group, rest = _split_block(comfy)
    if group is None:
        return None
    stem, _, role = rest.rpartition(".")
    for fused, parts in FUSED.items():
        if stem in parts:
            return f"{head}{fused}", role, parts.index(stem)
    return None
