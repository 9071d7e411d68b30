"""What one Linear of a checkpoint is: format, conventions, the tensors that hold it, and why we think so."""

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..kernels import FP8Weight, NVFP4Weight, WeightFormatError
from .errors import CheckpointError
from .reading.json_text import load_json

# Layer formats (the names `inspect --json` uses).
NVFP4 = "nvfp4"
FP8_SCALED = "fp8_scaled"
FP8 = "fp8"
FLOAT = "float"
LAYER_FORMATS = (NVFP4, FP8_SCALED, FP8, FLOAT)

# Tensor roles -> what they are. A LayerSpec maps each role it has to the full key in the file.
TENSOR_ROLES = {
    "weight": "the weight (packed uint8 for nvfp4, fp8 or float otherwise)",
    "bias": "the bias",
    "block_scale": "nvfp4 per-16 block scales (`weight_scale`)",
    "global_scale": "nvfp4 second-level scale (`weight_scale_2`)",
    "input_scale": "activation scale (`input_scale`; unused by weight-only kernels)",
    "scale": "fp8 weight scale (`weight_scale` or legacy `scale_weight`)",
    "scale_input": "legacy fp8 activation scale (`scale_input`)",
    "alpha": "LightX2V `alpha` (= input_scale * weight_scale_2)",
    "input_global_scale": "LightX2V `input_global_scale` (= 1 / input_scale)",
    "inverse_global_scale": "LightX2V converter `weight_global_scale` (= 2688 / amax = 1 / weight_scale_2)",
    "input_absmax": "LightX2V activation absmax (`input_absmax`; input_scale = input_absmax / 2688)",
    "comfy_quant": "ComfyUI per-layer quantization config (uint8 JSON)",
    "pre_quant_scale": "AWQ pre-quantization scale",
    "conventions": "this pack's per-layer nvfp4 conventions (uint8 JSON `nibble_order`, `scale_layout`): "
    "what ComfyUI saves for a layer the pack loaded in a convention ComfyUI does not read",
}
CONVENTIONS_SUFFIX = "wan_nvfp4_conventions"  # `<layer>.wan_nvfp4_conventions`, the `conventions` role
FULL_PRECISION_MM = "full_precision_matrix_mult"  # ComfyUI layer config: never quantize the activations


@dataclass(frozen=True)
class LayerSpec:
    """One Linear layer of a checkpoint.

    name:  the WAN layer name without any prefix (`blocks.0.self_attn.q`)
    key:   the key stem in the file (`model.diffusion_model.blocks.0.self_attn.q`)
    tensors: role -> full key in the file (see TENSOR_ROLES)
    nibble_order / scale_layout: nvfp4 only; fp8_granularity: `tensor` or `row`, fp8_scaled only
    evidence: human-readable reason for format and conventions; assumed: True when nothing decided them
    full_precision_mm: the file asks ComfyUI never to quantize this layer's activations (its layer config's
        `full_precision_matrix_mult`, or a legacy two-element `scaled_fp8` marker); kept by repair / convert
    """

    name: str
    key: str
    format: str
    out_features: int
    in_features: int
    weight_dtype: torch.dtype
    tensors: dict[str, str] = field(default_factory=dict)
    nibble_order: str | None = None
    scale_layout: str | None = None
    fp8_granularity: str | None = None
    evidence: str = ""
    assumed: bool = False
    full_precision_mm: bool = False

    @property
    def is_quantized(self) -> bool:
        return self.format != FLOAT


TensorGetter = Callable[[str], torch.Tensor]


def json_marker(conf: dict) -> torch.Tensor:
    """A per-layer marker tensor (`.comfy_quant`, `.wan_nvfp4_conventions`): UTF-8 JSON bytes as 1-D uint8."""
    return torch.tensor(list(json.dumps(conf).encode("utf-8")), dtype=torch.uint8)


MAX_MARKER_BYTES = 1 << 16  # a real marker is ~100 bytes; a hostile one is never turned into a list


def read_json_marker(tensor: torch.Tensor) -> dict:
    """The JSON object in a marker tensor; {} when it is unreadable, not uint8, too large or not an object."""
    if tensor.dtype != torch.uint8 or tensor.numel() > MAX_MARKER_BYTES:
        return {}
    try:
        conf = load_json(tensor.reshape(-1).contiguous().numpy().tobytes())
    except ValueError:
        return {}
    return conf if isinstance(conf, dict) else {}


# The nvfp4 second-level scale (ComfyUI's `weight_scale_2`) from the roles a producer stores, first match
# wins: (roles, description, value from the fp32 tensors). LightX2V's quantizer keeps the reciprocal
# `weight_global_scale` = 2688 / amax; its calibration step replaces it with `alpha` + `input_global_scale`.
GLOBAL_SCALE_RULES = (
    (("global_scale",), "weight_scale_2", lambda t: t["global_scale"]),
    (
        ("alpha", "input_global_scale"),
        "LightX2V alpha + input_global_scale",
        lambda t: t["alpha"] * t["input_global_scale"],
    ),
    (("inverse_global_scale",), "LightX2V weight_global_scale", lambda t: 1.0 / t["inverse_global_scale"]),
)
# roles only LightX2V writes (its provenance evidence)
LIGHTX2V_ROLES = frozenset({"alpha", "input_global_scale", "inverse_global_scale", "input_absmax"})


def global_scale_rule(spec: LayerSpec):
    """The GLOBAL_SCALE_RULES entry this layer's tensors satisfy, or None."""
    return next((rule for rule in GLOBAL_SCALE_RULES if set(rule[0]) <= spec.tensors.keys()), None)


def global_scale_of(spec: LayerSpec, get: TensorGetter) -> torch.Tensor:
    """The layer's second-level scale as an fp32 scalar, however its producer stored it."""
    rule = global_scale_rule(spec)
    if rule is None:
        expected = " or ".join(description for _, description, _ in GLOBAL_SCALE_RULES)
        raise CheckpointError(None, "nvfp4 layer has no second-level scale", spec.key, expected, "nothing")
    roles, _, value = rule
    return value({role: get(spec.tensors[role]).float().reshape(()) for role in roles}).reshape(())


def _nvfp4_weight(spec: LayerSpec, get: TensorGetter) -> NVFP4Weight:
    global_scale = global_scale_of(spec, get)
    block_scale = get(spec.tensors["block_scale"])
    if block_scale.dtype == torch.uint8:
        block_scale = block_scale.view(torch.float8_e4m3fn)
    return NVFP4Weight(
        packed=get(spec.tensors["weight"]),
        block_scale=block_scale,
        global_scale=global_scale,
        out_features=spec.out_features,
        in_features=spec.in_features,
        nibble_order=spec.nibble_order,
        scale_layout=spec.scale_layout,
    )


def _fp8_weight(spec: LayerSpec, get: TensorGetter) -> FP8Weight:
    scale = get(spec.tensors["scale"]).float() if "scale" in spec.tensors else None
    return FP8Weight(data=get(spec.tensors["weight"]), scale=scale)


def _float_weight(spec: LayerSpec, get: TensorGetter) -> torch.Tensor:
    return get(spec.tensors["weight"])


WEIGHT_BUILDERS = {NVFP4: _nvfp4_weight, FP8_SCALED: _fp8_weight, FP8: _fp8_weight, FLOAT: _float_weight}


def build_weight(spec: LayerSpec, get: TensorGetter, path=None):
    """The kernel-ready weight of `spec` (NVFP4Weight, FP8Weight or a float tensor), validated.

    `get(key)` returns the tensor stored under `key` (a file's lazy reader, or a state dict lookup).
    Raises CheckpointError naming the file and layer when the tensors do not fit the spec.
    """
    try:
        weight = WEIGHT_BUILDERS[spec.format](spec, get)
        return weight if isinstance(weight, torch.Tensor) else weight.validate()
    except WeightFormatError as e:
        raise CheckpointError(path, f"{spec.format} tensors do not fit ({e})", spec.key) from e
    except CheckpointError as e:
        raise CheckpointError(path, e.problem, spec.key, e.expected, e.found, e.hint) from e
    except KeyError as e:  # a getter over a plain dict
        raise CheckpointError(
            path, "a tensor of the layer is missing", spec.key, str(e.args[0]), "no such tensor"
        ) from e
