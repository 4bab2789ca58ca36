"""Helpers shared by the commands: one-line failures, argument checks, the top-level handler.

Exit codes, everywhere: 0 ok, 1 error (bad config, a dependency that failed, a bug), 2 partial
run or bad usage (an unknown option or id, a malformed or future date, a reversed range). Every
failure is ONE line on stderr; no traceback reaches a user: `OneLineGroup` (the app's click
group) catches whatever a command raises, writes the traceback to the log file
(autobill/logging_setup.py) and prints one line naming it.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 carries its own copy of click; its exceptions are the ones raised
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - an older typer on plain click
    from click import exceptions as click_exc

if TYPE_CHECKING:  # imported where used: pydantic and the config models cost ~0.1 s of start-up
    from autobill.config import Settings

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: $AUTOBILL_CONFIG or ./autobill.yaml)."),
]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    typer.echo(f"error: {_one_line(message)}", err=True)
    return typer.Exit(code)


def usage(message: str) -> typer.Exit:
    """A bad argument: one line, exit 2 (raise what this returns)."""
    return fail(message, EXIT_USAGE)


def settings_or_exit(path: Path | None) -> Settings:
    from autobill.config import ConfigError, load_settings

    try:
        return load_settings(path)
    except ConfigError as exc:
        raise fail(str(exc)) from None


# -- argument checks (before any flow starts) ---------------------------------------------------


def parse_day(value: str, option: str) -> date:
    """A YYYY-MM-DD date or a usage error naming the option."""
    try:
        return date.fromisoformat(value.strip())
    except (ValueError, AttributeError):
        raise usage(f"{option}: not a date (YYYY-MM-DD): {value!r}") from None


def not_after_today(day: date, option: str, settings: Settings) -> date:
    """A billing date must not be after today in the billing timezone (its calls have not happened)."""
    from autobill.timeutil import local_today

    today = local_today(settings.tz)
    if day > today:
        raise usage(f"{option}: {day} is in the future (today is {today} in {settings.timezone})")
    return day


def check_servers(settings: Settings, ids: Iterable[str] | None, option: str = "--server") -> list[str] | None:
    ids = list(ids or [])
    known = [s.id for s in settings.servers]
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise usage(f"{option}: unknown server {', '.join(map(repr, unknown))} (known: {', '.join(known) or 'none'})")
    return ids or None


def check_choice(value: str | None, choices: Iterable[str], option: str) -> str | None:
    choices = list(choices)
    if value is not None and value not in choices:
        raise usage(f"{option}: must be one of {', '.join(choices)}, not {value!r}")
    return value


# -- the top-level handler -------------------------------------------------------------------------

# Errors whose message is already the one line a user needs. Looked up by module, not imported:
# such an error can only have been raised once its module was loaded, and `autobill rate` never
# loads pydantic or the config models.
_KNOWN = (("autobill.config", "ConfigError"), ("autobill.secrets", "SecretError"))


def _known(exc: BaseException) -> bool:
    for module, name in _KNOWN:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(exc, cls):
            return True
    return False


class _TracebackToFile(logging.Formatter):
    """A console formatter that writes a record's traceback nowhere but says where it is: the
    record still reaches the log file's handler (and Prefect's API) whole."""

    def __init__(self, inner: logging.Formatter, where: Path) -> None:
        super().__init__()
        self.inner, self.where = inner, where

    def format(self, record: logging.LogRecord) -> str:
        if not (record.exc_info or record.exc_text or record.stack_info):
            return self.inner.format(record)
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return f"{self.inner.format(record)} (traceback in {self.where})"
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def tracebacks_to_log_file() -> Path:
    """For a command that runs a flow in this process: what its tasks log goes to the log file
    too, and a task's traceback (a PBX down is logged with one by Prefect) goes there only; the
    terminal gets its one line and the file's path. Returns the log file."""
    from prefect.logging.handlers import PrefectConsoleHandler

    from autobill.logging_setup import use_file_logging

    where = use_file_logging()
    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]
    for handler in {h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)}:
        if isinstance(handler.formatter, _TracebackToFile):
            handler.formatter.where = where  # a second command in this process may log elsewhere
        else:
            handler.setFormatter(_TracebackToFile(handler.formatter or logging.Formatter(), where))
    return where


def log_traceback(exc: BaseException) -> Path | None:
    """Append the traceback to the run log file; its path (None when even that failed)."""
    try:
        from autobill.logging_setup import RunLogFileHandler, default_log_file

        path = default_log_file()
        handler = RunLogFileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"))
        record = logging.LogRecord("autobill.cli", logging.ERROR, __file__, 0, "command %s failed:\n%s",
                                   (" ".join(sys.argv[1:]), "".join(traceback.format_exception(exc))), None)
        handler.emit(record)
        handler.close()
        return path
    except Exception:  # noqa: BLE001 - the log file is best effort; the one line is printed anyway
        return None


def _exit(code: Any) -> int:
    return code if isinstance(code, int) else EXIT_OK


class OneLineGroup(TyperGroup):
    """The app's click group: usage errors and crashes become ONE line on stderr (module docstring)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # noqa: ANN001
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_exc.NoArgsIsHelpError as exc:
            exc.show()
            code = EXIT_USAGE
        except click_exc.UsageError as exc:
            where = f"{exc.ctx.command_path}: " if exc.ctx is not None else ""
            typer.echo(f"error: {where}{_one_line(exc.format_message())} (--help for usage)", err=True)
            code = EXIT_USAGE
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            code = EXIT_ERROR
        except click_exc.ClickException as exc:
            typer.echo(f"error: {_one_line(exc.format_message())}", err=True)
            code = exc.exit_code
        except Exception as exc:  # noqa: BLE001 - the one place that turns a crash into one line
            if _known(exc):
                typer.echo(f"error: {_one_line(str(exc))}", err=True)
                sys.exit(EXIT_ERROR)
            path = log_traceback(exc)
            text = _one_line(str(exc))[:300] or "(no message)"
            where = f" (traceback in {path})" if path else ""
            typer.echo(f"error: {type(exc).__name__}: {text}{where}", err=True)
            code = EXIT_ERROR
        sys.exit(_exit(code))
