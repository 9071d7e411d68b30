"""`wan-nvfp4 inspect FILE [--json]`: what a checkpoint is, its conventions and problems, and two verdicts."""

import json
import sys

from ..checkpoint.conventions.inspect import EXIT_UNREADABLE, inspect_checkpoint
from ..checkpoint.errors import CheckpointError
from ..kernels import NIBBLE_ORDERS, SCALE_LAYOUTS


def add_arguments(parser) -> None:
    parser.add_argument(
        "file",
        help="a .safetensors checkpoint, or a sharded diffusers / ModelOpt export (its folder, index JSON "
        "or any shard); never modified",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    parser.add_argument(
        "--nibble-order", choices=NIBBLE_ORDERS, help="override the nibble order of nvfp4 layers"
    )
    parser.add_argument("--scale-layout", choices=SCALE_LAYOUTS, help="override the block-scale layout")
    parser.add_argument(
        "--no-scan",
        action="store_true",
        help="do not read nvfp4 block scales (faster; misses NaN block scales)",
    )
    parser.add_argument(
        "--reference",
        metavar="OTHER",
        help="the same model in another precision: decide the nvfp4 conventions by comparing with it",
    )


def run(args) -> int:
    match = None
    reason = "caller override"
    try:
        if getattr(args, "reference", None):
            from ..checkpoint.conventions.reference_match import compare_with_reference

            match = compare_with_reference(args.file, args.reference)
            # the decided conventions replace the file's evidence (explicit flags still win)
            if match.decided:
                by_reference = f"decided by comparison with the reference {args.reference}"
                explicit = args.nibble_order or args.scale_layout
                reason = f"caller override / {by_reference}" if explicit else by_reference
                args.nibble_order = args.nibble_order or match.nibble_order
                args.scale_layout = args.scale_layout or match.scale_layout
        report = inspect_checkpoint(
            args.file,
            nibble_order=args.nibble_order,
            scale_layout=args.scale_layout,
            scan_block_scales=not args.no_scan,
            override_reason=reason,
        )
    except CheckpointError as e:
        if args.json:
            print(
                json.dumps(
                    {
                        "file": args.file,
                        "error": str(e),
                        "readable": False,
                        "usable": False,
                        "exit_code": EXIT_UNREADABLE,
                    }
                )
            )
        else:
            print(f"error: {e}", file=sys.stderr)
        return EXIT_UNREADABLE
    if args.json:
        data = report.to_json() | ({"reference_check": match.to_json()} if match else {})
        print(json.dumps(data, indent=2))
    else:
        print(report.to_text() + (f"\n\n{match.to_text()}" if match else ""))
    return report.exit_code
