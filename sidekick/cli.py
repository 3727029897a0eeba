"""Run a click command the way the dispatcher expects: errors become SidekickErrors.

Click is imported only by the tools that use it, never on the entrypoint's hot path.
"""

from __future__ import annotations

import click

from sidekick.errors import SidekickError, UsageError


def run_click(command: click.Command, argv: list[str], *, prog_name: str) -> int:
    try:
        result = command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.exceptions.NoArgsIsHelpError as err:
        # A group called without its subcommand: the help is the answer, not a one-line error.
        click.echo(err.ctx.get_help() if err.ctx else err.format_message())
        return 2
    except click.UsageError as err:
        # One line: the original's users (and RKE) see only the last line.
        raise UsageError(err.format_message().replace("\n", " ")) from None
    except click.ClickException as err:
        raise SidekickError(err.format_message().replace("\n", " "), exit_code=err.exit_code) from None
    except click.Abort:
        raise SidekickError("aborted") from None
    return int(result or 0) if isinstance(result, int) else 0
