"""Arguments and error handling shared by the subcommands that write a new checkpoint (convert, repair)."""

import sys
from collections.abc import Callable

from ..checkpoint.errors import CheckpointError


def add_output_arguments(parser, src_help: str) -> None:
    """SRC, DST and the options every writing command has."""
    parser.add_argument("src", help=src_help)
    parser.add_argument(
        "dst", help="output .safetensors (written atomically; must not exist without --overwrite)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists (never SRC)")
    parser.add_argument(
        "--report", metavar="JSON", help="where to save the JSON report (default: next to DST)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--quiet", action="store_true", help="print only the summary, not every layer")


def run_job(job: Callable[[], object], quiet: bool) -> int:
    """Run a writing job; print its report (exit 0) or the error naming file and layer (exit 2)."""
    try:
        report = job()
    except (CheckpointError, ValueError, OSError) as e:  # OSError: e.g. the source vanished or is unreadable
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.to_text(max_rows=0 if quiet else None))
    return 0
