"""`wan-nvfp4 selftest [FILE]`: every convention end to end on tiny embedded WAN models, or check one file."""

import sys

from ..checkpoint.conventions.inspect import EXIT_UNREADABLE
from ..checkpoint.errors import CheckpointError
from ..checkpoint.tiny.fixtures import DEFAULT_VARIANT, TINY_VARIANTS
from ..checkpoint.tiny.selftest import check_file, run_selftest
from ..kernels import NIBBLE_ORDERS, SCALE_LAYOUTS


def add_arguments(parser) -> None:
    parser.add_argument("file", nargs="?", help="check this .safetensors file instead of the embedded models")
    parser.add_argument(
        "--variant",
        default=DEFAULT_VARIANT,
        choices=sorted(TINY_VARIANTS),
        help=f"tiny model structure for the embedded test (default {DEFAULT_VARIANT})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the tiny bf16 model (default 0)")
    parser.add_argument("--keep", metavar="DIR", help="write the tiny checkpoints into DIR and keep them")
    parser.add_argument("--nibble-order", choices=NIBBLE_ORDERS, help="FILE: override the nibble order")
    parser.add_argument("--scale-layout", choices=SCALE_LAYOUTS, help="FILE: override the scale layout")


def run(args) -> int:
    if args.file is None:
        result = run_selftest(variant=args.variant, seed=args.seed, keep=args.keep)
        print(result.to_text())
        return 0 if result.passed else 1
    try:
        check = check_file(args.file, nibble_order=args.nibble_order, scale_layout=args.scale_layout)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_UNREADABLE
    print(check.to_text())
    return 0 if check.passed else 1
