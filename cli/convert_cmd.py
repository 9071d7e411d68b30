"""`wan-nvfp4 convert SRC DST --to nvfp4|fp8`: quantize a float or scaled-FP8 WAN checkpoint."""

from ..checkpoint.progress import TextProgress
from ..checkpoint.writing.convert import KEEP_DTYPES, ConvertOptions, convert_checkpoint
from ..checkpoint.writing.output_formats import LAYOUTS
from ..checkpoint.writing.presets import PRESETS, TARGETS, PresetOptions
from .output_args import add_output_arguments, run_job


def add_arguments(parser) -> None:
    add_output_arguments(
        parser,
        "source .safetensors (bf16/fp16/fp32 or scaled FP8), or a diffusers export (folder, index or "
        "any shard); never modified",
    )
    parser.add_argument("--to", dest="target", choices=TARGETS, default="nvfp4", help="target format")
    parser.add_argument(
        "--layout",
        choices=tuple(LAYOUTS),
        default="comfy",
        help="comfy: ComfyUI-native, vanilla ComfyUI loads it (default); modelopt: NVIDIA ModelOpt",
    )
    parser.add_argument(
        "--preset", choices=tuple(PRESETS), default="wan", help="which layers stay high precision"
    )
    parser.add_argument("--keep-first-blocks", type=int, default=0, metavar="N", help="keep blocks 0..N-1")
    parser.add_argument("--keep-last-blocks", type=int, default=0, metavar="N", help="keep the last N blocks")
    parser.add_argument(
        "--keep",
        action="append",
        default=[],
        metavar="REGEX",
        help="also keep layers matching REGEX (repeatable)",
    )
    parser.add_argument(
        "--keep-dtype",
        choices=tuple(KEEP_DTYPES),
        default="source",
        help="dtype of kept float tensors (default: as in the source)",
    )


def run(args) -> int:
    options = ConvertOptions(
        target=args.target,
        layout=args.layout,
        preset=PresetOptions(
            preset=args.preset,
            keep_first_blocks=args.keep_first_blocks,
            keep_last_blocks=args.keep_last_blocks,
            keep=tuple(args.keep),
        ),
        keep_dtype=KEEP_DTYPES[args.keep_dtype],
        overwrite=args.overwrite,
    )
    progress = None if args.no_progress else TextProgress(f"convert -> {args.target}")
    return run_job(
        lambda: convert_checkpoint(args.src, args.dst, options, progress=progress, report_path=args.report),
        args.quiet,
    )
