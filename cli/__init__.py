"""`wan-nvfp4` command line: one module per subcommand, each with `add_arguments(parser)` and `run(args)`."""

import argparse
import importlib
import sys

# subcommand -> (module under wan_nvfp4.cli, one-line help)
COMMANDS = {
    "inspect": ("inspect_cmd", "report what a checkpoint is, its conventions and problems"),
    "selftest": ("selftest_cmd", "build tiny WAN checkpoints in every convention and check them end to end"),
    "convert": ("convert_cmd", "quantize a bf16/fp16/fp32 or scaled-FP8 WAN checkpoint to NVFP4 or FP8"),
    "repair": ("repair_cmd", "rewrite a foreign-convention NVFP4/FP8 file losslessly, ComfyUI-native"),
    "gpu": (
        "gpu_cmd",
        "report this GPU: versions, kernel self-check, a ~30 s benchmark (paste it into an issue)",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wan-nvfp4", description="NVFP4 / scaled-FP8 WAN checkpoint tools")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"{__name__}.{module_name}")
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def _never_fail_on_encoding() -> None:
    """Text from a file may hold characters the terminal cannot encode (a lone surrogate in a key name, or
    anything outside ASCII with PYTHONIOENCODING=ascii): write escapes instead of raising."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _never_fail_on_encoding()
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
