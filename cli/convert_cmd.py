"""`wan-nvfp4 convert SRC DST --to nvfp4|fp8`: quantize a float or scaled-FP8 WAN checkpoint."""

import sys

from ..checkpoint.convert import KEEP_DTYPES, ConvertOptions, convert_checkpoint
from ..checkpoint.errors import CheckpointError
from ..checkpoint.output_formats import LAYOUTS
from ..checkpoint.presets import PRESETS, TARGETS, PresetOptions
from ..checkpoint.progress import TextProgress


def add_arguments(parser) -> None:
    parser.add_argument("src", help="source .safetensors (bf16/fp16/fp32 or scaled FP8); never modified")
    parser.add_argument(
        "dst", help="output .safetensors (written atomically; must not exist without --overwrite)"
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
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists (never SRC)")
    parser.add_argument(
        "--report", metavar="JSON", help="where to save the JSON report (default: next to DST)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--quiet", action="store_true", help="print only the summary, not every layer")


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
    try:
        report = convert_checkpoint(args.src, args.dst, options, progress=progress, report_path=args.report)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.to_text(max_rows=0 if args.quiet else None))
    return 0
