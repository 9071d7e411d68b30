"""The loader inside a real ComfyUI (COMFYUI_PATH): every fixture convention and WAN variant loads through
ComfyUI's own WanModel with the pack's operations and matches vanilla ComfyUI running the oracle-dequantized
weights; weights stay quantized in memory; two models with different options coexist."""

import pytest
import torch

from wan_nvfp4.checkpoint.tiny.fixtures import CONVENTIONS, FIXTURES, TINY_VARIANTS

from . import comfy_harness as H

pytestmark = pytest.mark.comfyui

MAX_REL_ERR = 2e-3
# fixtures whose file states nothing that decides the conventions *and* that an honest reader gets wrong
MISREAD = [name for name, c in CONVENTIONS.items() if c.misread]
READABLE = [name for name, c in CONVENTIONS.items() if not c.misread]


@pytest.fixture(scope="module")
def loader():
    H.comfy()
    from wan_nvfp4.nodes import loader

    return loader


def _load_and_compare(loader, fx, folder, options=None):
    path = fx.write(folder)
    patcher = loader.load_wan_model(path, options or loader.LoaderOptions())
    inputs = H.forward_inputs(fx.variant)
    ours = H.run(patcher, inputs)
    oracle = H.run(H.vanilla_model(H.oracle_state_dict(fx)), inputs)
    H.unload()
    return patcher, H.rel_err(ours, oracle)


@pytest.mark.parametrize("name", READABLE)
def test_every_convention_matches_the_oracle(loader, tmp_path, name):
    _, err = _load_and_compare(loader, FIXTURES[name](), tmp_path)
    assert err <= MAX_REL_ERR, f"{name}: relative error {err:.3g} vs oracle"


@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
def test_every_variant_loads_mixed_formats(loader, tmp_path, variant):
    patcher, err = _load_and_compare(loader, FIXTURES["mixed"](variant=variant), tmp_path)
    assert err <= MAX_REL_ERR, f"{variant}: relative error {err:.3g}"
    from comfy.model_detection import detect_unet_config  # noqa: F401  (ComfyUI's own detection ran)

    in_dim = patcher.model.diffusion_model.patch_embedding.weight.shape[1]
    assert in_dim == TINY_VARIANTS[variant].in_dim


@pytest.mark.parametrize("name", MISREAD)
def test_undecidable_file_needs_the_override(loader, tmp_path, name):
    """Without evidence the file is read in ComfyUI's convention (wrong here); the override fixes it."""
    fx = FIXTURES[name]()
    _, default_err = _load_and_compare(loader, fx, tmp_path)
    assert default_err > 0.3, "reading with the assumed convention must visibly differ (negative test)"
    truth = next(t for t in fx.layers.values() if t.format == "nvfp4")
    options = loader.LoaderOptions(nibble_order=truth.nibble_order, scale_layout=truth.scale_layout)
    _, err = _load_and_compare(loader, fx, tmp_path, options)
    assert err <= MAX_REL_ERR


def test_weights_stay_quantized_as_read(loader, tmp_path):
    from comfy.quant_ops import QuantizedTensor

    fx = FIXTURES["modelopt_nvfp4"]()
    patcher = loader.load_wan_model(fx.write(tmp_path))
    q = patcher.model.diffusion_model.blocks[0].self_attn.q
    assert isinstance(q.weight, QuantizedTensor)
    assert q.weight.shape == (256, 256) and q.weight._qdata.dtype == torch.uint8
    stored = fx.tensors["blocks.0.self_attn.q.weight"]
    assert torch.equal(q.weight._qdata, stored), "packed bytes must be kept exactly as stored (no repacking)"
    assert torch.equal(
        q.weight._params.block_scale.view(torch.uint8),
        fx.tensors["blocks.0.self_attn.q.weight_scale"].view(torch.uint8),
    )
    # the state dict keeps `<layer>.weight` (LoRA key mapping) with the file's real byte sizes
    sd = patcher.model.diffusion_model.state_dict()
    assert sd["blocks.0.self_attn.q.weight"].dtype == torch.uint8
    packed_bytes = sum(t.nbytes for k, t in sd.items() if k.startswith("blocks.0.self_attn.q."))
    assert packed_bytes < 256 * 256 * 2 / 3
    # ComfyUI's memory accounting sees the packed size, not a dequantized one
    import comfy.model_management as mm

    assert mm.module_size(q) == packed_bytes


def test_unquantized_layers_handled_like_comfyui(loader, tmp_path):
    fx = FIXTURES["mixed"]()
    patcher = loader.load_wan_model(fx.write(tmp_path))
    dm = patcher.model.diffusion_model
    assert isinstance(dm.text_embedding[0].weight, torch.nn.Parameter)
    assert dm.text_embedding[0].weight.dtype == patcher.model.get_dtype()
    assert dm.patch_embedding.weight.dtype == torch.float32  # WanModel keeps its Conv3d in fp32


def test_two_models_with_different_options(loader, tmp_path):
    """Options live per load (no class-level state): each model keeps its own kernel path and LoRA mode."""
    fx = FIXTURES["comfy_nvfp4"]()
    path = fx.write(tmp_path)
    a = loader.load_wan_model(path, loader.LoaderOptions(kernel_path="reference", lora_mode="merge"))
    b = loader.load_wan_model(path, loader.LoaderOptions(kernel_path="torch"))
    qa = a.model.diffusion_model.blocks[0].self_attn.q
    qb = b.model.diffusion_model.blocks[0].self_attn.q
    assert type(qa) is not type(qb)
    assert (qa.plan.kernel_options.path, qa.wan_nvfp4_lora_mode) == ("reference", "merge")
    assert (qb.plan.kernel_options.path, qb.wan_nvfp4_lora_mode) == ("torch", "exact")
    inputs = H.forward_inputs(fx.variant)
    ya, yb = H.run(a, inputs), H.run(b, inputs)
    assert H.rel_err(ya, yb) <= MAX_REL_ERR
    assert {p for (_, p) in qa.plan.path_log._seen if p != "torch"} <= {"reference"}
    assert "reference" not in {p for (_, p) in qb.plan.path_log._seen}
    H.unload()


def test_path_log_summarises_once_per_model(loader, tmp_path):
    fx = FIXTURES["mixed"]()
    patcher = loader.load_wan_model(fx.write(tmp_path))
    H.run(patcher, H.forward_inputs(fx.variant))
    H.run(patcher, H.forward_inputs(fx.variant))
    log = patcher.model.diffusion_model.blocks[0].self_attn.q.plan.path_log
    assert len(log.lines) == 1
    assert "nvfp4:" in log.lines[0] and "fp8:" in log.lines[0] and "float:" in log.lines[0]
    H.unload()


def test_recreate_for_compile_delegate(loader, tmp_path):
    """`cached_patcher_init` rebuilds the model (ComfyUI does so for TorchCompileModel on Dynamic VRAM)."""
    fx = FIXTURES["comfy_nvfp4"]()
    patcher = loader.load_wan_model(fx.write(tmp_path), loader.LoaderOptions(lora_mode="merge"))
    fn, args = patcher.cached_patcher_init
    again = fn(*args, disable_dynamic=True)
    assert type(again).__name__ == "ModelPatcher"
    assert again.model.diffusion_model.blocks[0].self_attn.q.wan_nvfp4_lora_mode == "merge"


@pytest.mark.parametrize("name", MISREAD)
def test_reference_decides_the_undecidable_file(loader, tmp_path, name):
    """The Advanced loader's reference input: the same model in bf16 decides the conventions at load."""
    fx = FIXTURES[name]()
    reference = FIXTURES["bf16"](variant=fx.variant).write(tmp_path / "reference")
    options = loader.LoaderOptions(reference_path=str(reference))
    _, err = _load_and_compare(loader, fx, tmp_path, options)
    assert err <= MAX_REL_ERR, f"{name}: relative error {err:.3g} with the reference's decision"


def test_unrelated_reference_is_refused(loader, tmp_path):
    from wan_nvfp4.checkpoint import CheckpointError

    fx = FIXTURES["modelopt_nvfp4_stripped"]()
    path = fx.write(tmp_path)
    unrelated = FIXTURES["bf16"](variant=fx.variant, seed=7).write(tmp_path / "unrelated")
    with pytest.raises(CheckpointError, match="reference could not decide") as e:
        loader.load_wan_model(path, loader.LoaderOptions(reference_path=str(unrelated)))
    assert path.name in str(e.value)


def test_comfyui_native_path_uses_comfyui_ops(loader, tmp_path):
    """kernel_path comfyui-native hands a ComfyUI-native file to ComfyUI's own MixedPrecisionOps."""
    from comfy.quant_ops import QuantizedTensor

    from wan_nvfp4.nodes.linear import WanQuantLinear

    fx = FIXTURES["comfy_nvfp4"]()
    patcher, err = _load_and_compare(loader, fx, tmp_path, loader.LoaderOptions(kernel_path="comfyui-native"))
    modules = list(patcher.model.diffusion_model.modules())
    assert not any(isinstance(m, WanQuantLinear) for m in modules)
    q = patcher.model.diffusion_model.blocks[0].self_attn.q.weight
    assert isinstance(q, QuantizedTensor) and q._layout_cls == "TensorCoreNVFP4Layout"
    assert err <= 5e-3, f"ComfyUI's own NVFP4 emulation vs oracle: {err:.3g}"


@pytest.mark.parametrize(
    "name", ["modelopt_nvfp4", "modelopt_comfy_single_file", "fp8_scale_weight_no_marker"]
)
def test_comfyui_native_path_refuses_files_comfyui_misreads(loader, tmp_path, name):
    from wan_nvfp4.checkpoint import CheckpointError

    path = FIXTURES[name]().write(tmp_path)
    with pytest.raises(CheckpointError, match="native path cannot read this file correctly") as e:
        loader.load_wan_model(path, loader.LoaderOptions(kernel_path="comfyui-native"))
    assert path.name in str(e.value) and "repair" in str(e.value)


def test_comfyui_native_path_passes_disable_dynamic_on(loader, tmp_path, monkeypatch):
    """ComfyUI rebuilds a model for TorchCompileModel / multi-GPU clones with `disable_dynamic=True`; the
    native path must hand that to ComfyUI's loader (else it returns a Dynamic VRAM patcher's model)."""
    import comfy.sd

    seen = []
    real = comfy.sd.load_diffusion_model

    def spy(*args, **kwargs):
        seen.append(kwargs.get("disable_dynamic", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(comfy.sd, "load_diffusion_model", spy)
    path = FIXTURES["comfy_nvfp4"]().write(tmp_path)
    options = loader.LoaderOptions(kernel_path="comfyui-native")
    patcher = loader.load_wan_model(path, options, disable_dynamic=True)
    init, args = patcher.cached_patcher_init[0], patcher.cached_patcher_init[1]
    init(*args, disable_dynamic=True)  # what ModelPatcher.clone(disable_dynamic=True) calls
    assert seen == [True, True]


def test_reference_is_ignored_for_a_file_without_nvfp4_layers(loader, tmp_path):
    """A reference decides NVFP4 conventions only: an FP8 file with a reference left selected still loads."""
    fx = FIXTURES["kijai_fp8"]()
    reference = FIXTURES["bf16"](variant=fx.variant).write(tmp_path / "ref")
    _, err = _load_and_compare(loader, fx, tmp_path, loader.LoaderOptions(reference_path=str(reference)))
    assert err <= MAX_REL_ERR


# auto on this CPU: ComfyUI's own choice for quantized models (fp32 compute)
COMPUTE_DTYPE_CASES = {
    "auto": (torch.float32, MAX_REL_ERR),
    "bf16": (torch.bfloat16, 3e-2),
    "fp16": (torch.float16, 3e-2),
}


@pytest.mark.parametrize("choice", list(COMPUTE_DTYPE_CASES))
@pytest.mark.parametrize("kernel_path", ["auto", "comfyui-native"])
def test_compute_dtype_is_what_the_quantized_layers_receive(loader, tmp_path, choice, kernel_path):
    """The Advanced loader's compute dtype is honoured on CPU too, where ComfyUI would manual-cast to fp32.

    Tolerance: a bf16 forward of the tiny model is ~8e-3 from fp32 (docs/comfyui.md)."""
    expected, tol = COMPUTE_DTYPE_CASES[choice]
    fx = FIXTURES["comfy_nvfp4"]()
    options = loader.LoaderOptions(compute_dtype=choice, kernel_path=kernel_path)
    patcher = loader.load_wan_model(fx.write(tmp_path), options)
    q = patcher.model.diffusion_model.blocks[0].self_attn.q
    seen = []
    handle = q.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    inputs = H.forward_inputs(fx.variant)
    try:
        ours = H.run(patcher, inputs)
    finally:
        handle.remove()
    oracle = H.run(H.vanilla_model(H.oracle_state_dict(fx)), inputs)
    H.unload()
    assert seen == [expected], f"{choice}: the quantized layer received {seen}"
    err = H.rel_err(ours, oracle)
    assert err <= tol, f"{choice}: relative error {err:.3g} vs the fp32 oracle"


def test_pair_loader_loads_both_experts_with_the_same_settings(loader, tmp_path):
    """The 2.2 A14B pair node: two independent models, each its own file, both with the node's settings."""
    folder = H.models_folder(tmp_path)
    from wan_nvfp4.nodes.loader_nodes import WanNVFP4PairLoader

    high = FIXTURES["modelopt_nvfp4"](variant="wan2.2-t2v-a14b", seed=1)
    low = FIXTURES["kijai_fp8"](variant="wan2.2-t2v-a14b", seed=2)
    names = [fx.write(folder).name for fx in (high, low)]
    out = WanNVFP4PairLoader.execute(*names, kernel_path="torch", lora_mode="merge")
    patchers = out.result
    assert len(patchers) == 2 and patchers[0].model is not patchers[1].model
    inputs = H.forward_inputs(high.variant)
    for fx, patcher in zip((high, low), patchers, strict=True):
        q = patcher.model.diffusion_model.blocks[0].self_attn.q
        assert (q.plan.kernel_options.path, q.wan_nvfp4_lora_mode) == ("torch", "merge")
        assert q.plan.path.endswith(fx.filename)
        err = H.rel_err(H.run(patcher, inputs), H.run(H.vanilla_model(H.oracle_state_dict(fx)), inputs))
        assert err <= MAX_REL_ERR, f"{fx.name}: relative error {err:.3g} vs its own oracle"
    other = H.rel_err(H.run(patchers[0], inputs), H.run(patchers[1], inputs))
    assert other > 0.3, "the two experts must be different models (negative check)"
    H.unload()


def test_pair_loader_reference_per_expert(loader, tmp_path):
    """Undecidable files for both experts: each expert's own reference decides its conventions; swapping the
    references is refused (each reference is unrelated to the other expert)."""
    from wan_nvfp4.checkpoint import CheckpointError

    folder = H.models_folder(tmp_path)
    from wan_nvfp4.nodes.loader_nodes import WanNVFP4PairLoader

    variant = "wan2.2-t2v-a14b"
    experts = [FIXTURES["modelopt_nvfp4_stripped"](variant=variant, seed=s) for s in (1, 2)]
    names = []
    for fx, expert in zip(experts, ("high", "low"), strict=True):  # fixture file names do not name the seed
        path = fx.write(tmp_path / expert)
        names.append(path.rename(folder / f"{expert}_{path.name}").name)
    refs = []
    for seed in (1, 2):  # the same seeded models as the experts, in bf16
        ref = FIXTURES["bf16"](variant=variant, seed=seed).write(tmp_path / f"ref{seed}")
        refs.append(ref.rename(folder / f"reference_{seed}.safetensors").name)
    out = WanNVFP4PairLoader.execute(*names, high_noise_reference=refs[0], low_noise_reference=refs[1])
    inputs = H.forward_inputs(variant)
    for fx, patcher in zip(experts, out.result, strict=True):
        err = H.rel_err(H.run(patcher, inputs), H.run(H.vanilla_model(H.oracle_state_dict(fx)), inputs))
        assert err <= MAX_REL_ERR, f"relative error {err:.3g} with the expert's own reference"
    H.unload()
    with pytest.raises(CheckpointError, match="reference could not decide"):
        WanNVFP4PairLoader.execute(*names, high_noise_reference=refs[1], low_noise_reference=refs[0])


def test_pair_loader_warns_when_one_file_is_both_experts(loader, tmp_path, caplog):
    folder = H.models_folder(tmp_path)
    from wan_nvfp4.nodes.loader_nodes import WanNVFP4PairLoader

    name = FIXTURES["comfy_nvfp4"](variant="wan2.2-t2v-a14b").write(folder).name
    with caplog.at_level("WARNING", logger="wan_nvfp4.nodes"):
        out = WanNVFP4PairLoader.execute(name, name)
    assert len(out.result) == 2
    assert any("both the high-noise and the low-noise expert" in r.getMessage() for r in caplog.records)
