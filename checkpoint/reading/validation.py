"""Every check that decides whether a checkpoint is usable, in one place: `checkpoint_problems`.

The classifier calls it once per file, so `inspect`, `repair`, `convert`, the Doctor and every loader node
see the same problems; `CheckpointInfo.raise_for_problems()` is the one gate that refuses a file with an
error. What is checked:

- each Linear (`checks.check_layer`): missing, mis-shaped or mis-typed scales; NaN/Inf, zero or negative
  scales of every level, block scales included (their bytes are read unless the caller opts out, e.g.
  `inspect --no-scan`: they are 1/16 of an nvfp4 weight's elements);
- the model (`structure_problems`): every block has its WAN Linears as 2-D weights, with the dims the model
  has (a transposed FFN, a 1-D weight or one block of another width is an error, not a shape error later in
  the forward);
- the file: not a WAN diffusion model; tensor dtypes the pack never expects (a warning).
"""

from ..problems import ERROR, WARNING, Problem
from .checks import check_layer
from .json_text import load_json
from .layer_keys import EXPECTED_DTYPES, natural_key
from .variant import WanVariant

# per-block Linears of a WAN DiT (ComfyUI `WanAttentionBlock`): name -> (out, in) in units of the model dims
BLOCK_LINEARS = {
    **{f"{attn}.{p}": ("dim", "dim") for attn in ("self_attn", "cross_attn") for p in "qkvo"},
    "ffn.0": ("ffn_dim", "dim"),
    "ffn.2": ("dim", "ffn_dim"),
}
OPTIONAL_BLOCK_LINEARS = {"cross_attn.k_img": ("dim", "dim"), "cross_attn.v_img": ("dim", "dim")}
# model-level Linears whose dims follow from `dim` (None: not checked)
MODEL_LINEARS = {
    "text_embedding.2": ("dim", "dim"),
    "time_embedding.0": ("dim", None),
    "time_embedding.2": ("dim", "dim"),
    "time_projection.1": ("6dim", "dim"),
    "head.head": (None, "dim"),
}
BLOCK_GROUPS = (("blocks", "num_layers"), ("vace_blocks", "vace_layers"))


def _ffn_dim(layers: dict, dims) -> int:
    """The FFN width: the dim of `blocks.0.ffn.0` that is not the model dim (ComfyUI reads its out-dim, which
    a transposed weight would turn into the model dim)."""
    spec = layers.get("blocks.0.ffn.0")
    if spec is None or spec.in_features == dims.dim:
        return dims.ffn_dim
    return spec.in_features if spec.out_features == dims.dim else dims.ffn_dim


def _want(dims, ffn_dim: int, unit):
    return {"dim": dims.dim, "ffn_dim": ffn_dim, "6dim": 6 * dims.dim, None: None}[unit]


def _dims_problem(spec, want: tuple, dims, ffn_dim: int) -> Problem | None:
    found = (spec.out_features, spec.in_features)
    if all(w is None or w == f for w, f in zip(want, found, strict=True)):
        return None
    shown = [("any" if w is None else w) for w in want]
    transposed = found == tuple(reversed(want)) and want[0] != want[1]
    return Problem(
        ERROR,
        "layer is transposed" if transposed else "layer dims do not fit the model",
        spec.key,
        f"[{shown[0]}, {shown[1]}] (out, in features) for model dim {dims.dim}, ffn dim {ffn_dim}",
        f"[{found[0]}, {found[1]}]",
    )


def _missing_linear(source, prefix: str, name: str) -> Problem | None:
    key = f"{prefix}{name}.weight"
    if key not in source:
        return Problem(
            ERROR, "WAN layer missing", f"{prefix}{name}", f"{key} (a 2-D weight)", "no such tensor"
        )
    shape = list(source.shape(key))
    if len(shape) == 2:
        return None  # a 2-D weight the classifier refused for its dtype: reported there
    return Problem(
        ERROR, "Linear weight is not 2-D", f"{prefix}{name}", "a 2-D [out, in] weight", f"shape {shape}"
    )


def structure_problems(source, prefix: str, layers: dict, variant: WanVariant) -> list[Problem]:
    """Block Linears present, 2-D and of the model's dims (only for a file detected as WAN)."""
    dims = variant.dims
    if not variant.is_wan or dims is None:
        return []
    out = []
    ffn_dim = _ffn_dim(layers, dims)
    for group, count_field in BLOCK_GROUPS:
        for index in range(getattr(dims, count_field)):
            for part, units in (BLOCK_LINEARS | OPTIONAL_BLOCK_LINEARS).items():
                name = f"{group}.{index}.{part}"
                spec = layers.get(name)
                if spec is None:
                    problem = _missing_linear(source, prefix, name) if part in BLOCK_LINEARS else None
                else:
                    problem = _dims_problem(
                        spec, tuple(_want(dims, ffn_dim, u) for u in units), dims, ffn_dim
                    )
                out += [problem] if problem else []
    for name, units in MODEL_LINEARS.items():
        if name in layers:
            want = tuple(_want(dims, ffn_dim, u) for u in units)
            problem = _dims_problem(layers[name], want, dims, ffn_dim)
            out += [problem] if problem else []
    return out


def dtype_problems(source) -> list[Problem]:
    odd: dict[str, list[str]] = {}
    for key in list(source.keys()):
        dtype = source.dtype(key)
        if dtype not in EXPECTED_DTYPES:
            odd.setdefault(str(dtype).removeprefix("torch."), []).append(key)
    return [
        Problem(
            WARNING,
            "unexpected tensor dtype",
            keys[0],
            "float16/bfloat16/float32/uint8/float8",
            f"{dtype} in {len(keys)} tensor(s), e.g. {keys[0]}",
            kind="tensor",
        )
        for dtype, keys in sorted(odd.items())
    ]


def not_wan_problem(source, variant: WanVariant) -> Problem:
    keys = sorted(source.keys(), key=natural_key) if len(source) <= 1000 else sorted(source.keys())
    sample = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
    return Problem(
        ERROR,
        "not a WAN diffusion model",
        "head.modulation",
        "WAN DiT keys (head.modulation, head.head.weight, blocks.N.*, patch_embedding.weight)",
        f"{variant.evidence}; {len(keys)} tensors: {sample}",
        kind="tensor",
    )


def metadata_problems(metadata: dict[str, str]) -> list[Problem]:
    """Header values ComfyUI itself parses while loading: unreadable, they fail inside ComfyUI."""
    raw = metadata.get("config")
    if raw is None:
        return []
    try:
        config = load_json(raw)
        ok = isinstance(config, dict) and isinstance(config.get("transformer", {}), dict)
        found = "JSON that is not an object with an object `transformer`"
    except ValueError as e:
        ok, found = False, f"not JSON ({e})"
    if ok:
        return []
    return [
        Problem(
            ERROR,
            "header config is not valid (ComfyUI's WAN detection reads it and fails)",
            "config",
            'a JSON object, e.g. {"transformer": {...}}',
            found,
            kind="header key",
        )
    ]


def checkpoint_problems(
    source, prefix: str, layers: dict, variant: WanVariant, scan_block_scales: bool = True
) -> list[Problem]:
    """Every problem of the file that is not about its provenance evidence (see the module docstring)."""
    out = [not_wan_problem(source, variant)] if not variant.is_wan else []
    out += metadata_problems(source.metadata)
    for spec in layers.values():
        out += check_layer(source, spec, scan_block_scales)
    return out + structure_problems(source, prefix, layers, variant) + dtype_problems(source)
