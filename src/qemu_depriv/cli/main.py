"""Entry point: global options, subcommand dispatch, errors to exit codes.

Global options (``--config``, ``--state-dir``, ``--prefix``, ``-v``, ``--debug``, ``--json``)
are accepted before or after the subcommand: each subparser repeats them with suppressed
defaults, so a value given before the subcommand is not overwritten by the subparser's default.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from qemu_depriv import __version__
from qemu_depriv.cli import (
    audit,
    demo,
    doctor,
    launch,
    provision,
    recover,
    resolve,
    run,
    stop,
)
from qemu_depriv.cli import list as listing
from qemu_depriv.cli.context import Context
from qemu_depriv.cli.output import report_error
from qemu_depriv.errors import InvalidInput, QemuDeprivError
from qemu_depriv.settings import load_settings

log = logging.getLogger("qemu_depriv")

PROG = "qemu-depriv"
#: The settings file qemu-depriv-dm reads when set.
CONFIG_VARIABLE = "QEMU_DEPRIV_CONFIG"
#: The exit status of a process killed by SIGPIPE, as a shell reports it.
EXIT_BROKEN_PIPE = 128 + 13
SUBCOMMANDS = (resolve, launch, run, stop, listing, recover, audit, provision, doctor, demo)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors become InvalidInput (one line, exit 2)."""

    def error(self, message: str) -> NoReturn:
        # The error line already starts with "qemu-depriv: error: "; name only the subcommand.
        command = self.prog.removeprefix(PROG).strip()
        raise InvalidInput(
            f"{command + ': ' if command else ''}{message} (see '{self.prog} --help')"
        )


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options")
    group.add_argument("--config", type=Path, default=default(None), help="TOML settings file")
    group.add_argument("--state-dir", default=default(None), help="state directory (absolute)")
    group.add_argument("--prefix", default=default(None), help="account-name prefix")
    group.add_argument(
        "-v", "--verbose", action="count", default=default(0), help="say more (repeatable)"
    )
    group.add_argument(
        "--debug", action="store_true", default=default(False), help="log everything, tracebacks"
    )
    group.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the full parser."""
    parser = _Parser(
        prog=PROG,
        description="Run every QEMU device model as its own unprivileged user.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_options(parser, suppress=False)
    parent = _Parser(add_help=False)
    _global_options(parent, suppress=True)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in SUBCOMMANDS:
        module.add_parser(commands, parent)
    return parser


class _Formatter(logging.Formatter):
    """``qemu-depriv: warning: ...``, as the CLI's own warnings and errors read."""

    def format(self, record: logging.LogRecord) -> str:
        record.levelname = record.levelname.lower()
        return super().format(record)


def _configure_logging(verbose: int, debug: bool) -> None:
    level = logging.DEBUG if debug or verbose > 1 else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("qemu-depriv: %(levelname)s: %(message)s"))
    for old in [h for h in log.handlers if isinstance(h, logging.StreamHandler)]:
        log.removeHandler(old)
    log.addHandler(handler)
    log.setLevel(level)


def main(argv: Sequence[str] | None = None, *, own_process: bool | None = None) -> int:
    """Run the command line and return its exit code.

    ``own_process`` says that the process is this command's own (by default: when ``argv``
    is the process's), so that ``run`` may exec in it (:mod:`qemu_depriv.vms.waiter`).

    A reader that closes the pipe early (``... --json | head -c1``) ends the command quietly,
    as any CLI ends there, with the status of a SIGPIPE.
    """
    own = argv is None if own_process is None else own_process
    try:
        return _main(argv, (sys.executable, *sys.orig_argv[1:]) if own else None)
    except BrokenPipeError:
        # Python's own flush at exit would fail again and print: point stdout at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None, command_line: tuple[str, ...] | None) -> int:
    # Paths and names are bytes to Linux: print what could not be decoded as it was read.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="surrogateescape")
    arguments = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in arguments
    debug = "--debug" in arguments
    try:
        args = build_parser().parse_args(arguments)
        as_json, debug = args.json, args.debug
        _configure_logging(args.verbose, args.debug)
        settings = load_settings(args.config).with_overrides(
            prefix=args.prefix, state_dir=args.state_dir
        )
        context = Context(settings=settings, as_json=as_json, command_line=command_line)
        code: int = args.run(args, context)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers, not at exit
    except BrokenPipeError:
        raise
    except QemuDeprivError as exc:
        if debug:
            log.debug("traceback", exc_info=exc)
        report_error(exc, as_json=as_json)
        return exc.exit_code
    except KeyboardInterrupt:
        print("qemu-depriv: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        report_error(
            QemuDeprivError(f"internal error: {exc!r} (run with --debug for the traceback)"),
            as_json=as_json,
        )
        return 4
    return code


def dm_main() -> int:
    """``qemu-depriv-dm``: libxl's device model, named in ``device_model_override``.

    libxl runs it with the whole device-model command line it built, and its own path as
    ``argv[0]``: the real QEMU is the settings' ``xen_qemu``, and the settings file is
    ``$QEMU_DEPRIV_CONFIG`` when set (libxl passes no options of ours, but the environment),
    else ``/etc/qemu-depriv.toml``.
    """
    config = os.environ.get(CONFIG_VARIABLE)
    options = ["--config", config] if config else []
    return main([*options, "run", "--xen", "--", *sys.argv[1:]], own_process=True)


if __name__ == "__main__":
    sys.exit(main())
