"""`wan-nvfp4 gpu [--json]`: environment, kernel self-check and a ~30 s benchmark of this machine's GPU."""

import json

from ..bench import gpu_report


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    parser.add_argument("--no-bench", action="store_true", help="environment and self-check only (seconds)")
    parser.add_argument(
        "--device", default="cuda", help="cuda (default), cuda:N, or cpu (a smoke run of the report's code)"
    )
    parser.add_argument("--shapes", help="comma-separated NxK shapes instead of the WAN 5B / 14B layers")
    parser.add_argument("--m", help="comma-separated M values instead of 16,512,32760")


def run(args) -> int:
    shapes = ms = None
    if args.shapes or args.m:
        base = gpu_report.CPU_SHAPES if args.device == "cpu" else gpu_report.REPORT_SHAPES
        shapes = (
            tuple(
                gpu_report.bench_linear.Shape("custom", *map(int, s.lower().split("x")))
                for s in args.shapes.split(",")
            )
            if args.shapes
            else base
        )
        ms = (
            tuple(int(m) for m in args.m.split(","))
            if args.m
            else (gpu_report.CPU_M if args.device == "cpu" else gpu_report.REPORT_M)
        )
    report = gpu_report.build_report(args.device, run_benchmark=not args.no_bench, shapes=shapes, ms=ms)
    print(json.dumps(report, indent=2) if args.json else gpu_report.to_markdown(report))
    return 0
