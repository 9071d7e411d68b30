"""Tiny diffusers-format WAN exports, as NVIDIA ModelOpt writes them, each with its ComfyUI-named twin.

The twin is an ordinary fixture (ComfyUI names, ground truth known): `bf16`, ModelOpt FP8 (`float8_e4m3fn`
weight, fp32 scalar `weight_scale` and `input_scale`) or ModelOpt NVFP4 (low-first packed `weight`, linear
e4m3 `weight_scale [N, K/16]`, fp32 `weight_scale_2`, `input_scale`). The export is the twin renamed with the
diffusers mapping in reverse (`reading.diffusers_names.diffusers_key`), optionally with fused projections
(`to_qkv`, `to_kv`, `to_added_kv`, rows concatenated as diffusers' `fuse_projections` does), sharded tensor by
tensor into `diffusion_pytorch_model-0000k-of-0000n.safetensors` with the HF index, a `config.json` with the
`WanTransformer3DModel` config and, when quantized, ModelOpt's `quantization_config` (compressed-tensors
style, as `convert_hf_quant_config_format` writes it into config.json), and the pipeline's
`model_index.json` (A14B: `transformer` = high-noise expert, `transformer_2` = low-noise, `boundary_ratio`).

    export = write_diffusers_export(folder, "wan2.2-t2v-a14b", "nvfp4")
    export.components["transformer"]          # the folder of the high-noise expert
    export.twins["transformer_2"]             # the low-noise expert as a ComfyUI-named Fixture
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..layers import FP8_SCALED
from ..reading.diffusers_names import diffusers_key, fuse_group
from .fixtures import FIXTURES, Fixture, _input_scale
from .tiny_wan import CLIP_DIM, FREQ_DIM, TEXT_DIM, TINY_VARIANTS

EXPORT_FORMATS = ("bf16", "fp8", "nvfp4")
MODELOPT_VERSION = "0.47.0"
A14B_BOUNDARY = {"wan2.2-t2v-a14b": 0.875, "wan2.2-i2v-a14b": 0.9}  # scripts/convert_wan_to_diffusers.py
HEAD_DIM = 128


def _modelopt_fp8(variant: str, seed: int) -> Fixture:
    """ComfyUI-named ModelOpt FP8: per-tensor fp8 weights with fp32 scalar weight_scale and input_scale."""
    fx = FIXTURES["comfy_fp8"](variant=variant, seed=seed)
    tensors = {}
    for key, t in fx.tensors.items():
        tensors[key] = t
        stem = key.removesuffix(".weight_scale")
        if stem != key and fx.layers[stem].format == FP8_SCALED:
            tensors[stem + ".input_scale"] = _input_scale(stem, seed)
    kept = sorted(n for n, t in fx.layers.items() if t.format != FP8_SCALED)
    config = _hf_quant_config("FP8", kept)
    return dataclasses.replace(fx, tensors=tensors, metadata={"quantization_config": json.dumps(config)})


def twin_fixture(variant: str, fmt: str, seed: int = 0) -> Fixture:
    """The ComfyUI-named twin of an export: what the export must load as."""
    if fmt == "bf16":
        return FIXTURES["bf16"](variant=variant, seed=seed)
    if fmt == "fp8":
        return _modelopt_fp8(variant, seed)
    if fmt == "nvfp4":
        return FIXTURES["modelopt_nvfp4"](variant=variant, seed=seed)
    raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {fmt!r}")


def _hf_quant_config(algo: str, kept: list[str]) -> dict:
    quantization = {"quant_algo": algo, "kv_cache_quant_algo": None, "exclude_modules": kept}
    if algo == "NVFP4":
        quantization["group_size"] = 16
    return {"producer": {"name": "modelopt", "version": MODELOPT_VERSION}, "quantization": quantization}


def config_json_quantization(algo: str, kept: list[str]) -> dict:
    """ModelOpt's config.json `quantization_config` (modelopt/torch/export/convert_hf_config.py)."""
    bits = 4 if algo == "NVFP4" else 8
    group = {"group_size": 16} if algo == "NVFP4" else {}
    scheme = {"dynamic": False, "num_bits": bits, "type": "float", **group}
    return {
        "config_groups": {
            "group_0": {"input_activations": dict(scheme), "weights": dict(scheme), "targets": ["Linear"]}
        },
        "ignore": kept,
        "quant_algo": algo,
        "producer": {"name": "modelopt", "version": MODELOPT_VERSION},
        "quant_method": "modelopt",
    }


def transformer_config(variant: str) -> dict:
    """The diffusers `WanTransformer3DModel` config.json of the tiny model of `variant`."""
    c = TINY_VARIANTS[variant]
    config = {
        "_class_name": "WanVACETransformer3DModel" if c.vace_layers else "WanTransformer3DModel",
        "_diffusers_version": "0.36.0",
        "patch_size": [1, 2, 2],
        "num_attention_heads": c.dim // HEAD_DIM,
        "attention_head_dim": HEAD_DIM,
        "in_channels": c.in_dim,
        "out_channels": c.out_dim,
        "text_dim": TEXT_DIM,
        "freq_dim": FREQ_DIM,
        "ffn_dim": c.ffn_dim,
        "num_layers": c.num_layers,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-06,
        "image_dim": CLIP_DIM if c.img_emb else None,
        "added_kv_proj_dim": c.dim if c.i2v_cross_attn else None,
        "rope_max_seq_len": 1024,
        "pos_embed_seq_len": c.emb_pos_tokens or None,
    }
    if c.vace_layers:
        config |= {"vace_layers": list(range(c.vace_layers)), "vace_in_channels": c.vace_in_dim}
    return config


def diffusers_tensors(fx: Fixture, fused: bool = False) -> dict[str, torch.Tensor]:
    """The twin's tensors under their diffusers names (fused projections concatenated when `fused`)."""
    out: dict[str, torch.Tensor] = {}
    groups: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for key, t in fx.tensors.items():
        group = fuse_group(key) if fused else None
        if group is not None:
            stem, role, i = group
            groups.setdefault((stem, role), {})[i] = t
            continue
        name = diffusers_key(key)
        if name is None:
            raise ValueError(f"{key}: no diffusers name")
        out[name] = t
    for (stem, role), parts in groups.items():
        ordered = [parts[i] for i in sorted(parts)]
        if ordered[0].dim() == 0 or ordered[0].numel() == 1:  # shared scalars (ModelOpt unifies them)
            if any(not torch.equal(p, ordered[0]) for p in ordered):
                raise ValueError(f"{stem}.{role}: fused parts need one shared scale")
            out[f"{stem}.{role}"] = ordered[0]
        else:
            out[f"{stem}.{role}"] = torch.cat(ordered)
    return out


def share_fused_scalars(fx: Fixture) -> Fixture:
    """`fx` with each fusable projection's per-tensor scalars (`weight_scale_2`, `input_scale`, ...) made the
    first part's, as ModelOpt writes a fused projection (one scale for the concatenated rows); in place."""
    first: dict[tuple[str, str], torch.Tensor] = {}
    for key in sorted(fx.tensors, key=lambda k: (fuse_group(k) or ("", "", 0))[2]):
        group = fuse_group(key)
        t = fx.tensors[key]
        if group is not None and (t.dim() == 0 or t.numel() == 1):
            fx.tensors[key] = first.setdefault(group[:2], t).clone()
    return fx


def _shard(tensors: dict[str, torch.Tensor], shards: int) -> list[dict[str, torch.Tensor]]:
    """Tensor by tensor into `shards` groups of about equal bytes (a layer may straddle two shards)."""
    keys = sorted(tensors)
    total = sum(tensors[k].numel() * tensors[k].element_size() for k in keys)
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(shards)]
    done = 0
    for k in keys:
        i = min(shards - 1, done * shards // max(total, 1))
        out[i][k] = tensors[k]
        done += tensors[k].numel() * tensors[k].element_size()
    return [s for s in out if s]


def write_transformer(folder: Path, fx: Fixture, fmt: str, shards: int = 2, fused: bool = False) -> Path:
    """One diffusers transformer folder for the twin `fx` (shards + index + config.json)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = diffusers_tensors(fx, fused)
    parts = _shard(tensors, shards)
    weight_map = {}
    for i, part in enumerate(parts, 1):
        name = f"diffusion_pytorch_model-{i:05d}-of-{len(parts):05d}.safetensors"
        save_file({k: v.contiguous() for k, v in part.items()}, str(folder / name), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, name)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = transformer_config(fx.variant)
    if fmt != "bf16":
        kept = sorted(
            diffusers_key(f"{n}.weight").removesuffix(".weight")
            for n, t in fx.layers.items()
            if t.format == "float"
        )
        config["quantization_config"] = config_json_quantization(fmt.upper(), kept)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


@dataclass
class DiffusersExport:
    """A written pipeline export: `root` (with model_index.json), component name -> folder and -> twin."""

    root: Path
    variant: str
    format: str
    components: dict[str, Path]
    twins: dict[str, Fixture]

    def shard(self, component: str = "transformer", i: int = 0) -> Path:
        return sorted(self.components[component].glob("*.safetensors"))[i]

    def index(self, component: str = "transformer") -> Path:
        return self.components[component] / "diffusion_pytorch_model.safetensors.index.json"


def export_name(variant: str, fmt: str, fused: bool = False) -> str:
    return f"{variant}-diffusers-{fmt}{'-fused' if fused else ''}"


def write_diffusers_export(
    folder: str | Path, variant: str, fmt: str, seed: int = 0, shards: int = 2, fused: bool = False
) -> DiffusersExport:
    """Write the tiny model of `variant` as a diffusers pipeline export in `fmt` under `folder`.

    A14B variants get both experts: `transformer` (high noise, `seed`) and `transformer_2` (low noise,
    `seed + 1`), with the pipeline's `boundary_ratio`."""
    root = Path(folder) / export_name(variant, fmt, fused)
    a14b = variant in A14B_BOUNDARY
    seeds = {"transformer": seed, "transformer_2": seed + 1} if a14b else {"transformer": seed}
    twins = {name: twin_fixture(variant, fmt, s) for name, s in seeds.items()}
    components = {name: write_transformer(root / name, fx, fmt, shards, fused) for name, fx in twins.items()}
    pipeline = "WanImageToVideoPipeline" if "i2v" in variant or "flf2v" in variant else "WanPipeline"
    model_index = {
        "_class_name": pipeline,
        "_diffusers_version": "0.36.0",
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": ["diffusers", "WanTransformer3DModel"] if a14b else [None, None],
        "boundary_ratio": A14B_BOUNDARY.get(variant),
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }
    (root / "model_index.json").write_text(json.dumps(model_index, indent=2))
    return DiffusersExport(root, variant, fmt, components, twins)
