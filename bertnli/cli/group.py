"""The click group that turns every error into one line, and SIGTERM into a resumable interruption."""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

import click

from bertnli import BadInput, BertnliError
from bertnli.files import cache_root


class Group(click.Group):
    """Every error leaves as one line: `bertnli-exp: error: ...`; usage errors exit 2."""

    def main(self, *args, **kwargs):  # noqa: D401
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
            sys.exit(rv if isinstance(rv, int) else 0)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help())
            sys.exit(0)
        except click.UsageError as e:
            cmd = e.ctx.command_path if e.ctx else "bertnli-exp"
            click.echo(f"{cmd}: error: {e.format_message()} (see {cmd} --help)", err=True)
            sys.exit(2)
        except click.exceptions.Abort as e:  # click turns KeyboardInterrupt (and our SIGTERM) into Abort
            if isinstance(e.__context__, Terminated):
                click.echo(
                    "bertnli-exp: terminated (SIGTERM); runs are marked KILLED; run the same command "
                    "(train: with --resume) to continue",
                    err=True,
                )
                sys.exit(143)
            click.echo("bertnli-exp: interrupted", err=True)
            sys.exit(130)
        except click.ClickException as e:
            click.echo(f"bertnli-exp: error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except BadInput as e:
            click.echo(f"bertnli-exp: error: {e}", err=True)
            sys.exit(2)
        except BertnliError as e:
            click.echo(f"bertnli-exp: error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt as e:
            click.echo(
                f"bertnli-exp: {'terminated' if isinstance(e, Terminated) else 'interrupted'}; the run is marked "
                "KILLED; run the same command (train: with --resume) to continue",
                err=True,
            )
            sys.exit(143 if isinstance(e, Terminated) else 130)
        except Exception as e:  # noqa: BLE001 - nothing leaves as a traceback: it goes to a file, named here
            first = str(e).splitlines()[0][:300] if str(e) else ""
            click.echo(f"bertnli-exp: error: {type(e).__name__}: {first} (traceback in {save_traceback()})", err=True)
            sys.exit(1)


def save_traceback() -> Path:
    """The current exception's traceback, kept where a user (or a bug report) can find it."""
    folder = cache_root() / "errors"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    path.write_text(f"bertnli-exp {' '.join(sys.argv[1:])}\n\n{traceback.format_exc()}")
    return path


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `timeout`, `docker stop`): handled like Ctrl-C, so the run ends KILLED and resumable."""


def _raise_terminated(signum, frame):
    raise Terminated()


def handle_sigterm() -> None:
    import signal

    signal.signal(signal.SIGTERM, _raise_terminated)
