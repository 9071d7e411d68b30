"""The native FP4 path inside a real ComfyUI (COMFYUI_PATH, CPU): NVFP4 layers of every convention, converted
at load, run through ComfyUI's own quantized ops and give what stock ComfyUI gives on the `repair`ed file.

On CPU ComfyUI runs nvfp4 emulated (dequantize, then F.linear); its W4A4 branch (activations quantized,
F.linear on two QuantizedTensors -> comfy-kitchen's `scaled_mm_nvfp4`) is exercised with a simulated
Blackwell: the facts say the GEMM is usable, ComfyUI's `supports_nvfp4_compute` says True, and
`scaled_mm_nvfp4` (cuBLASLt on the GPU; comfy-kitchen's eager version cannot run on CPU) is replaced by the
same product computed from comfy-kitchen's own dequantization, for stock ComfyUI and for us alike.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from wan_nvfp4.checkpoint.conventions.inspect import inspect_checkpoint
from wan_nvfp4.checkpoint.conventions.verdicts import LOADS_NATIVELY
from wan_nvfp4.checkpoint.tiny.fixtures import CONVENTIONS, FIXTURES, with_full_precision_mm
from wan_nvfp4.checkpoint.writing.repair import RepairOptions, repair_checkpoint
from wan_nvfp4.kernels.native_fp4 import NATIVE_DEQUANT, NATIVE_GEMM, FP4GemmFacts

from . import comfy_harness as H

pytestmark = pytest.mark.comfyui

MAX_REL_ERR = 2e-3
SAMPLE_LAYERS = ("blocks.0.self_attn.q", "blocks.0.ffn.0", "blocks.1.cross_attn.k", "head.head")
NVFP4_FIXTURES = [n for n, c in CONVENTIONS.items() if any(c.plan(x) == "nvfp4" for x in SAMPLE_LAYERS)]
BLACKWELL = FP4GemmFacts("cuda", (12, 0), (13, 0), True, True)
BLACKWELL_CU128 = FP4GemmFacts("cuda", (12, 0), (12, 8), False, True, "disabled in ComfyUI")
NATIVE_LAYOUT = "TensorCoreNVFP4Layout"


@pytest.fixture(scope="module")
def loader():
    H.comfy()
    from wan_nvfp4.nodes import loader

    return loader


def _simulate(monkeypatch, facts: FP4GemmFacts):
    from wan_nvfp4.nodes import native_fp4

    monkeypatch.setattr(native_fp4, "probe", lambda device=None: facts)


def _emulated_scaled_mm_nvfp4(
    a, b, tensor_scale_a, tensor_scale_b, block_scale_a, block_scale_b, bias=None, out_dtype=None, alpha=None
):
    """What cuBLASLt's block-scaled FP4 GEMM computes, from comfy-kitchen's own (eager) dequantization."""
    import comfy_kitchen as ck

    with ck.use_backend("eager"):
        da = ck.dequantize_nvfp4(a, tensor_scale_a, block_scale_a, output_type=torch.float32)
        db = ck.dequantize_nvfp4(b, tensor_scale_b, block_scale_b, output_type=torch.float32)
    y = da @ db.t()
    if bias is not None:
        y = y + F.pad(bias.float(), (0, y.shape[1] - bias.shape[0]))
    return y.to(out_dtype or torch.bfloat16)


def _simulate_fp4_gemm(monkeypatch):
    import comfy.model_management
    import comfy_kitchen

    monkeypatch.setattr(comfy_kitchen, "scaled_mm_nvfp4", _emulated_scaled_mm_nvfp4)
    monkeypatch.setattr(comfy.model_management, "supports_nvfp4_compute", lambda device=None: True)


def _repaired(fx, tmp_path):
    """(source file, ComfyUI-native file written by `repair`, loader overrides for undecidable files)."""
    conv = fx.convention
    overrides = {"nibble_order": conv.nibble_order, "scale_layout": conv.scale_layout} if conv.misread else {}
    src = fx.write(tmp_path / "in")
    dst = tmp_path / "repaired" / "repaired.safetensors"
    dst.parent.mkdir()
    repair_checkpoint(src, dst, RepairOptions(**overrides), save_report=False)
    return src, dst, overrides


def _stock(path):
    import comfy.sd

    return comfy.sd.load_diffusion_model(str(path))


def _nvfp4_modules(patcher):
    return {
        name: m
        for name, m in patcher.model.diffusion_model.named_modules()
        if getattr(getattr(m, "weight", None), "_layout_cls", None) == NATIVE_LAYOUT
    }


@pytest.mark.parametrize("name", NVFP4_FIXTURES)
def test_converted_model_equals_stock_comfyui_on_the_repaired_file(loader, tmp_path, name, caplog):
    """Forced native-fp4 on CPU: ComfyUI's eager path. Bytes of every converted layer are the repaired file's,
    and the forward is bit-identical to stock ComfyUI's on that file."""
    fx = FIXTURES[name]()
    src, repaired, overrides = _repaired(fx, tmp_path)
    with caplog.at_level("INFO", logger="wan_nvfp4.nodes"):
        patcher = loader.load_wan_model(src, loader.LoaderOptions(kernel_path="native-fp4", **overrides))
    assert f"{src.name}: NVFP4 layers: native-fp4 (forced): ComfyUI's dequantizing fallback" in caplog.text
    converted = _nvfp4_modules(patcher)
    assert converted, "the NVFP4 layers must hold ComfyUI's own layout"
    from safetensors import safe_open

    with safe_open(str(repaired), "pt") as f:
        for name_, module in converted.items():
            key = fx.prefix + name_
            w = module.weight
            assert torch.equal(w._qdata, f.get_tensor(key + ".weight")), name_
            assert torch.equal(
                w._params.block_scale.view(torch.uint8), f.get_tensor(key + ".weight_scale").view(torch.uint8)
            )
            assert torch.equal(w._params.scale.reshape(()), f.get_tensor(key + ".weight_scale_2").reshape(()))
    inputs = H.forward_inputs(fx.variant)
    ours = H.run(patcher, inputs)
    log = next(iter(converted.values())).plan.path_log
    log.flush()
    assert f"nvfp4: {len(converted)} layers ({NATIVE_DEQUANT})" in log.lines[-1], log.lines
    stock = H.run(_stock(repaired), inputs)
    H.unload()
    assert torch.equal(ours, stock), f"{name}: {H.rel_err(ours, stock):.3g} from stock ComfyUI"
    assert H.rel_err(ours, H.run(H.vanilla_model(H.oracle_state_dict(fx)), inputs)) <= MAX_REL_ERR
    H.unload()


@pytest.mark.parametrize("name", ["modelopt_nvfp4", "lightx2v_nvfp4", "mixed"])
def test_auto_on_simulated_blackwell_runs_the_fp4_gemm_like_stock_comfyui(
    loader, tmp_path, monkeypatch, name
):
    """auto + usable GEMM: converted layers, activations quantized per block (with the file's input_scale),
    the GEMM through comfy-kitchen's scaled_mm_nvfp4: bit-identical to stock ComfyUI on the repaired file."""
    fx = FIXTURES[name]()
    src, repaired, _ = _repaired(fx, tmp_path)
    _simulate(monkeypatch, BLACKWELL)
    _simulate_fp4_gemm(monkeypatch)
    patcher = loader.load_wan_model(src)
    converted = _nvfp4_modules(patcher)
    plan = next(iter(converted.values())).plan
    assert plan.nvfp4.native and plan.nvfp4.quantized_mm, plan.nvfp4.reason
    inputs = H.forward_inputs(fx.variant)
    ours = H.run(patcher, inputs)
    plan.path_log.flush()
    line = plan.path_log.lines[-1]
    assert f"({NATIVE_GEMM})" in line and plan.nvfp4.reason.startswith("auto: ComfyUI's FP4 GEMM (W4A4)"), (
        line
    )
    if name == "mixed":
        assert "fp8:" in line and "triton" not in line  # FP8 layers stay on our kernels (torch on CPU)
    stock = H.run(_stock(repaired), inputs)
    H.unload()
    assert torch.equal(ours, stock), f"{name}: {H.rel_err(ours, stock):.3g} from stock ComfyUI"
    oracle = H.run(H.vanilla_model(H.oracle_state_dict(fx)), inputs)
    H.unload()
    err = H.rel_err(ours, oracle)
    # the tiny random model with the fixtures' static input_scale: W4A4 is visibly (not wildly) off W4A16
    assert 1e-3 < err < 0.5, f"W4A4 quantizes activations: off the W4A16 oracle by {err:.3g}"


def test_layers_the_file_wants_in_full_precision_never_quantize_activations(loader, tmp_path, monkeypatch):
    """`full_precision_matrix_mult: true` on some NVFP4 layers: on the simulated Blackwell, stock ComfyUI runs
    those layers dequantized (W4A16) and the rest through the FP4 GEMM; so do we, bit for bit (the repaired
    file keeps the flags, so stock sees them too). Saving the model keeps the flags in `.comfy_quant`."""
    import comfy.sd

    flagged = ("blocks.0.self_attn.q", "blocks.1.cross_attn.k")
    fx = with_full_precision_mm(FIXTURES["comfy_nvfp4"](), flagged)
    src, repaired, _ = _repaired(fx, tmp_path)
    _simulate(monkeypatch, BLACKWELL)
    _simulate_fp4_gemm(monkeypatch)
    patcher = loader.load_wan_model(src)
    converted = _nvfp4_modules(patcher)
    assert {n for n, m in converted.items() if m.wan_nvfp4_full_precision_mm} == set(flagged)
    inputs = H.forward_inputs(fx.variant)
    ours = H.run(patcher, inputs)
    plan = next(iter(converted.values())).plan
    plan.path_log.flush()
    line = plan.path_log.lines[-1]
    assert f"{len(flagged)} layers ({NATIVE_DEQUANT})" in line and f"({NATIVE_GEMM})" in line, line
    stock_patcher = _stock(repaired)
    stock = H.run(stock_patcher, inputs)
    stock_flags = {n for n, m in _nvfp4_modules(stock_patcher).items() if m._full_precision_mm_config}
    assert stock_flags == set(flagged), "the repaired file must carry the flags to stock ComfyUI"
    assert torch.equal(ours, stock), f"{H.rel_err(ours, stock):.3g} from stock ComfyUI"
    unflagged = H.run(_stock(_repaired(FIXTURES["comfy_nvfp4"](), tmp_path / "plain")[1]), inputs)
    assert not torch.equal(unflagged, stock), "control: the flags must change what stock ComfyUI computes"
    saved = tmp_path / "saved.safetensors"
    comfy.sd.save_checkpoint(str(saved), patcher, metadata={})
    H.unload()
    from safetensors import safe_open

    with safe_open(str(saved), "pt") as f:
        for name in ("blocks.0.self_attn.q", "blocks.0.self_attn.k"):
            conf = json.loads(bytes(f.get_tensor(f"model.diffusion_model.{name}.comfy_quant").tolist()))
            assert conf.get("full_precision_matrix_mult", False) == (name in flagged), (name, conf)


def test_without_the_cuda_backend_auto_keeps_our_kernels(loader, tmp_path, monkeypatch):
    _simulate(monkeypatch, BLACKWELL_CU128)
    fx = FIXTURES["modelopt_nvfp4"]()
    patcher = loader.load_wan_model(fx.write(tmp_path))
    assert not _nvfp4_modules(patcher)
    q = patcher.model.diffusion_model.blocks[0].self_attn.q
    assert q.weight._layout_cls == "WanNVFP4Layout" and torch.equal(
        q.weight._qdata, fx.tensors["blocks.0.self_attn.q.weight"]
    )
    assert "torch built for CUDA (12, 8)" in q.plan.nvfp4.reason and "W4A16" in q.plan.nvfp4.reason


def test_w4a16_choice_is_kept_on_blackwell(loader, tmp_path, monkeypatch):
    _simulate(monkeypatch, BLACKWELL)
    fx = FIXTURES["comfy_nvfp4"]()
    patcher = loader.load_wan_model(fx.write(tmp_path), loader.LoaderOptions(kernel_path="w4a16"))
    assert not _nvfp4_modules(patcher)
    inputs = H.forward_inputs(fx.variant)
    err = H.rel_err(H.run(patcher, inputs), H.run(H.vanilla_model(H.oracle_state_dict(fx)), inputs))
    H.unload()
    assert err <= MAX_REL_ERR


# ---- LoRA, offloading, saving on converted layers ---------------------------------------------------------


@pytest.fixture
def lora_env(loader, tmp_path):
    from .test_comfy_lora import _lora

    c = H.comfy()
    fx = FIXTURES["modelopt_nvfp4"](variant="wan2.1-t2v-14b")
    loras = tmp_path / "loras"
    loras.mkdir()
    save_file(_lora(fx), str(loras / "native_lora.safetensors"))
    c["folder_paths"].add_model_folder_path("loras", str(loras))
    src, repaired, _ = _repaired(fx, tmp_path)

    def with_lora(patcher):
        return (
            c["nodes"].LoraLoaderModelOnly().load_lora_model_only(patcher, "native_lora.safetensors", 1.0)[0]
        )

    def native(lora_mode="exact"):
        return loader.load_wan_model(src, loader.LoaderOptions(kernel_path="native-fp4", lora_mode=lora_mode))

    return {"fx": fx, "repaired": repaired, "with_lora": with_lora, "native": native}


def test_exact_and_merged_lora_on_converted_layers(lora_env):
    env = lora_env
    inputs = H.forward_inputs(env["fx"].variant)
    oracle = H.run(env["with_lora"](H.vanilla_model(H.oracle_state_dict(env["fx"]))), inputs)
    base = env["native"]()
    q = base.model.diffusion_model.blocks[0].self_attn.q
    stored = q.weight._qdata.clone()
    y_base = H.run(base, inputs)
    y_exact = H.run(env["with_lora"](base), inputs)
    exact_err = H.rel_err(y_exact, oracle)
    assert H.rel_err(y_exact, y_base) > 0.05 and exact_err <= MAX_REL_ERR
    assert torch.equal(H.run(base, inputs), y_base) and torch.equal(q.weight._qdata, stored)
    H.unload()
    # merge: requantized through ComfyUI's own NVFP4 layout, as stock ComfyUI merges the repaired file
    merged_base = env["native"]("merge")
    mq = merged_base.model.diffusion_model.blocks[0].self_attn.q
    y_merge = H.run(env["with_lora"](merged_base), inputs)
    assert mq.weight._layout_cls == NATIVE_LAYOUT and not torch.equal(mq.weight._qdata, stored)
    merge_err = H.rel_err(y_merge, oracle)
    assert merge_err > 10 * exact_err and merge_err < 0.2
    H.unload()
    y_stock_merge = H.run(env["with_lora"](_stock(env["repaired"])), inputs)
    H.unload()
    assert torch.equal(y_merge, y_stock_merge), f"{H.rel_err(y_merge, y_stock_merge):.3g} from stock's merge"
    assert torch.equal(mq.weight._qdata, stored), "unpatching restores the converted weight"


def test_offloaded_converted_layers_with_and_without_lora(lora_env):
    env = lora_env
    inputs = H.forward_inputs(env["fx"].variant)
    base = env["native"]()
    y_full = H.run(base, inputs)
    H.unload()
    y_low = H.run(base, inputs, lowvram_bytes=64 * 1024)
    assert base.model.model_lowvram, "the patcher must really have offloaded modules"
    base.unpatch_model(torch.device("cpu"))
    assert torch.equal(y_low, y_full)
    lora = env["with_lora"](base)
    y_low_lora = H.run(lora, inputs, lowvram_bytes=64 * 1024)
    lora.unpatch_model(torch.device("cpu"))
    y_full_lora = H.run(lora, inputs)
    H.unload()
    assert H.rel_err(y_low_lora, y_full_lora) <= 1e-6 and H.rel_err(y_low_lora, y_full) > 0.05


@pytest.mark.parametrize("name", ["modelopt_nvfp4", "lightx2v_nvfp4"])
def test_saving_a_converted_model_writes_comfyui_native_markers(loader, tmp_path, name):
    import comfy.sd

    fx = FIXTURES[name]()
    src, repaired, _ = _repaired(fx, tmp_path)
    patcher = loader.load_wan_model(src, loader.LoaderOptions(kernel_path="native-fp4"))
    inputs = H.forward_inputs(fx.variant)
    ours = H.run(patcher, inputs)
    saved = tmp_path / "saved.safetensors"
    comfy.sd.save_checkpoint(str(saved), patcher, metadata={})
    H.unload()
    report = inspect_checkpoint(saved)
    assert report.comfyui.outcome == LOADS_NATIVELY, report.comfyui.reasons[:3]
    assert not report.info.assumed
    from safetensors import safe_open

    with safe_open(str(saved), "pt") as f, safe_open(str(repaired), "pt") as r:
        keys = set(f.keys())
        assert not any(k.endswith(".wan_nvfp4_conventions") for k in keys)
        stem = "model.diffusion_model.blocks.0.self_attn.q"
        assert stem + ".comfy_quant" in keys and stem + ".input_scale" in keys
        assert torch.equal(
            f.get_tensor(stem + ".weight"), r.get_tensor(fx.prefix + "blocks.0.self_attn.q.weight")
        )
    vanilla = H.run(_stock(saved), inputs)
    H.unload()
    assert H.rel_err(vanilla, ours) <= 1e-5  # float layers saved in the model dtype; NVFP4 bytes as converted


def test_saving_an_exact_lora_on_converted_layers_merges_it(lora_env, tmp_path):
    import comfy.sd

    env = lora_env
    inputs = H.forward_inputs(env["fx"].variant)
    merged = H.run(env["with_lora"](env["native"]("merge")), inputs)
    H.unload()
    exact = env["with_lora"](env["native"]())
    saved = tmp_path / "saved_lora.safetensors"
    comfy.sd.save_checkpoint(str(saved), exact, metadata={})
    H.unload()
    again = H.run(_stock(saved), inputs)
    H.unload()
    assert H.rel_err(again, merged) <= 1e-5, "the saved file (read by stock ComfyUI) must equal merge mode"
