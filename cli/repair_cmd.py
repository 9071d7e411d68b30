"""`wan-nvfp4 repair SRC DST`: lossless rewrite of a foreign-convention NVFP4/FP8 file, ComfyUI-native."""

from ..checkpoint.progress import TextProgress
from ..checkpoint.writing.repair import PER_ROW_FP8, VERIFY_MODES, RepairOptions, repair_checkpoint
from ..kernels import NIBBLE_ORDERS, SCALE_LAYOUTS
from .output_args import add_output_arguments, run_job


def add_arguments(parser) -> None:
    add_output_arguments(
        parser,
        "the quantized .safetensors to repair, or a sharded diffusers / ModelOpt export (folder, "
        "index or any shard); never modified",
    )
    parser.add_argument("--nibble-order", choices=NIBBLE_ORDERS, help="read the NVFP4 weights in this order")
    parser.add_argument(
        "--scale-layout", choices=SCALE_LAYOUTS, help="read the NVFP4 block scales in this layout"
    )
    parser.add_argument(
        "--reference",
        metavar="OTHER",
        help="the same model in another precision: decides the NVFP4 conventions by comparison",
    )
    parser.add_argument(
        "--per-row-fp8",
        choices=tuple(PER_ROW_FP8),
        default="keep",
        help="per-row FP8 has no ComfyUI-native form: keep it (default), requantize per tensor, or bf16",
    )
    parser.add_argument(
        "--verify",
        choices=VERIFY_MODES,
        default="sample",
        help="compare dequantized weights on a sample of layers (default) or on every layer",
    )


def run(args) -> int:
    options = RepairOptions(
        nibble_order=args.nibble_order,
        scale_layout=args.scale_layout,
        per_row_fp8=args.per_row_fp8,
        verify=args.verify,
        overwrite=args.overwrite,
    )
    progress = None if args.no_progress else TextProgress("repair")
    return run_job(
        lambda: repair_checkpoint(
            args.src, args.dst, options, progress=progress, report_path=args.report, reference=args.reference
        ),
        args.quiet,
    )
