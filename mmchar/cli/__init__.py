"""The `mmchar` command: profile, compare, view, export. Errors end here as one line (``--debug`` for tracebacks)."""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import warnings

import click
import typer

from mmchar.errors import MmcharError, Terminated, first_line

# typer >= 0.20 vendors its own click (typer._click); older ones use click itself: catch both.
_EXIT = tuple({click.exceptions.Exit, typer.Exit})
_ABORT = tuple({click.exceptions.Abort, typer.Abort})
_USAGE = tuple({click.ClickException, getattr(typer, "TyperException", click.ClickException)})

INTERRUPTED = 130  # the shell's code for SIGINT
TERMINATED = 143  # and for SIGTERM
# profile and compare store their runs at the end: only a sweep has finished runs to keep when stopped mid-way
INTERRUPTED_LINE = "interrupted; runs that finished are in the store (a re-run of a sweep measures only the rest)"
TERMINATED_LINE = INTERRUPTED_LINE.replace("interrupted", "terminated (SIGTERM)", 1)

app = typer.Typer(name="mmchar", add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Where the time goes in text-to-image and text-to-video generation: profile, compare, view, export.")


def _quiet_libraries() -> None:
    """Library chatter (deprecations, progress bars, random-weight notices) would drown the tool's output."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code (0 ok, 1 error, 130 interrupted, 143 terminated)."""
    _quiet_libraries()  # before torch is imported: Kineto reads its log level once
    importlib.import_module("mmchar.cli.commands")  # registers the commands
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("MMCHAR_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    terminated: list[int] = []

    def on_sigterm(signum: int, frame: object) -> None:
        if terminated:  # once: a second SIGTERM (a process group's, a sweep passing it on) must not cut the cleanup
            return
        terminated.append(signum)
        raise Terminated()

    # SIGTERM as Ctrl-C (the main thread only: a handler cannot be installed elsewhere), restored after
    handling = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if handling else None
    try:
        code = _run(args, debug, terminated)
    finally:
        if handling and previous is not None:  # None: a handler installed from C, which Python cannot restore
            signal.signal(signal.SIGTERM, previous)
    if terminated and code == INTERRUPTED:  # click and typer turn the KeyboardInterrupt into their own exits
        code = TERMINATED
    return _exit(code, argv)


def _run(args: list[str], debug: bool, terminated: list[int]) -> int:
    """The command's exit code; every error, interruption included, reported in one line (``terminated``: the
    SIGTERMs the handler saw)."""
    from mmchar.cli.output import error_line

    def interrupted() -> int:
        error_line(TERMINATED_LINE if terminated else INTERRUPTED_LINE)
        return INTERRUPTED

    try:
        result = app(args=args, prog_name="mmchar", standalone_mode=False)
        code = result if isinstance(result, int) else 0
        if code == INTERRUPTED:  # typer turns Ctrl-C into Exit(130), which standalone_mode=False returns
            interrupted()
    except MmcharError as e:
        if debug:
            raise
        error_line(str(e))
        code = 1
    except _EXIT as e:
        code = getattr(e, "exit_code", 0)
        if code == INTERRUPTED:  # typer turns Ctrl-C into Exit(130) before it reaches the handler below
            code = interrupted()
    except _ABORT:
        code = interrupted()
    except _USAGE as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # the help has been printed
            return 0
        if debug:
            raise
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        error_line(" ".join(message.split()) + " (see mmchar --help)")
        code = 1
    except KeyboardInterrupt:
        code = interrupted()
    except Exception as e:  # the edge: anything unexpected is still one line unless --debug
        if debug:
            raise
        error_line(f"unexpected {type(e).__name__}: {first_line(e)} (re-run with --debug for the traceback)")
        code = 1
    return code


def _exit(code: int, argv: list[str] | None) -> int:
    if argv is None:
        sys.exit(code)
    return code
