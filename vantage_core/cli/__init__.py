"""The ``vantage`` command.

Subcommands live in their own modules and are imported only when invoked, so that
``vantage plugins`` starts fast and a broken subsystem cannot break the others.
"""

from __future__ import annotations

import importlib
import sys

import click

import vantage_core
from vantage_core.errors import VantageError

# name -> "module:attribute" of a click command or group
COMMANDS = {
    "plugins": "vantage_core.cli.basics:plugins",
    "config": "vantage_core.cli.basics:config",
    "doctor": "vantage_core.cli.basics:doctor",
    "evaluate": "vantage_core.cli.evaluate:evaluate",
    "data": "vantage_core.cli.data:data",
    "tokenizer": "vantage_core.cli.data:tokenizer",
    "params": "vantage_core.cli.model:params",
    "train": "vantage_core.cli.train:train",
    "adapt": "vantage_core.cli.train:adapt",
    "plot": "vantage_core.cli.train:plot",
    "sweep": "vantage_core.cli.train:sweep",
    "quickstart": "vantage_core.cli.train:quickstart",
    "generate": "vantage_core.cli.infer:generate",
    "serve": "vantage_core.cli.infer:serve",
    "export": "vantage_core.cli.infer:export",
    "analyze": "vantage_core.cli.analyze:analyze",
    "report": "vantage_core.cli.report:report",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup)
@click.version_option(vantage_core.__version__, prog_name="vantage")
def cli() -> None:
    """Vantage: Mixture-of-Experts text-to-SQL research, built from plugins."""


def main(argv: list[str] | None = None) -> None:
    try:
        code = cli.main(args=argv, prog_name="vantage", standalone_mode=False)
        if isinstance(code, int) and code:  # a command's click.exceptions.Exit(code)
            sys.exit(code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except VantageError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except UnicodeDecodeError as exc:
        # a reader that does not name its file yet: still one line, not a traceback
        click.echo(f"error: a file is not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset "
                   f"{exc.start}: {exc.reason})", err=True)
        sys.exit(2)
    except RecursionError:
        click.echo("error: an input is nested too deeply to read", err=True)
        sys.exit(2)
    except ModuleNotFoundError as exc:
        # an environment without one of Vantage's own dependencies (mlx, most often): say which
        package = (exc.name or str(exc)).split(".")[0]
        click.echo(f"error: the Python package '{package}' is not installed for {sys.executable}; "
                   "`bash install.sh` in the Vantage folder installs Vantage's own dependencies, and pip "
                   "a plugin's optional one", err=True)
        sys.exit(2)
    except OSError as exc:
        # a file or folder the command could not read or write (an --out under a file, in a
        # folder it may not write, on a full disk): one line naming it, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"error: {where}{exc.strerror or exc}; give a path this user can read or write", err=True)
        sys.exit(2)
