"""``compression-studio``: the GUI by default, and the headless commands over the same core."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from studio import __version__
from studio.cli.inspect import add_inspect_command
from studio.cli.run import add_run_command
from studio.cli.search import add_search_command
from studio.core.errors import StudioError


def _gui(args: argparse.Namespace) -> int:
    from studio.qt.app import run_gui  # imported here so headless commands never load Qt

    return run_gui(args.target, architecture=args.arch, input_shape=args.input_shape)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's own default must not undo "--debug" given before the subcommand.
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks for errors")
    parser = argparse.ArgumentParser(
        prog="compression-studio", parents=[common],
        description="Make neural networks smaller and faster without losing their accuracy. "
                    "With no command, opens the studio.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    gui = commands.add_parser("gui", parents=[common], help="open the studio (the default)")
    gui.add_argument("target", nargs="?", help="model file, project folder, or 'demo'")
    gui.add_argument("--arch", help="architecture of a state dict, as package.module:factory")
    gui.add_argument("--input-shape", help="example input, e.g. 1,3,224,224")
    gui.set_defaults(handler=_gui)
    add_inspect_command(commands, common)
    add_run_command(commands, common)
    add_search_command(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["gui", *(argv if argv is not None else sys.argv[1:])])
    try:
        return args.handler(args)
    except StudioError as error:
        if getattr(args, "debug", False):
            raise
        one_line = " ".join(str(error).split())  # torch messages can span several lines
        print(f"compression-studio: error: {one_line}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
