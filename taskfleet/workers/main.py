"""Start a worker with Celery's ``worker`` command, without the rest of Celery's command line.

``python -m taskfleet.workers.main -A taskfleet.app worker -P solo -Q cpu ...`` takes what
``celery -A taskfleet.app worker ...`` takes, and runs the same click command
(``celery.bin.worker.worker``) with the same options, environment variables
(``CELERY_WORKER_*``) and exit codes.

What it skips is ``celery``, the umbrella command: before it parses a single argument, it
imports every subcommand and every installed plugin of the ``celery.commands`` entry-point
group. Here that is Flower's command (tornado, humanize), ``celery amqp``'s shell
(click-repl, prompt_toolkit, pygments, wcwidth) and ``celery shell``: about 250 modules
that no worker runs. Measured on an idle solo worker: 1,150 modules and 78.0 MiB RSS through
``celery``, 904 modules and 67.3 MiB through this module.

Only ``-A``/``--app`` may come before ``worker``; any other command line (another
subcommand, a global option such as ``--broker``, ``--help``) is handed to Celery's own
``celery`` command unchanged. ``taskfleet up`` starts its workers here unless
``TASKFLEET_LEAN_WORKER_CLI=false``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Final

#: Run as ``python -m`` this module.
MODULE: Final[str] = "taskfleet.workers.main"
#: Celery's environment prefix for the ``worker`` command's options (``CELERY_WORKER_*``).
WORKER_ENVVAR_PREFIX: Final[str] = "CELERY_WORKER"
#: What Celery's umbrella command calls itself in usage and error messages.
PROG_NAME: Final[str] = "celery worker"
APP_FLAGS: Final[frozenset[str]] = frozenset({"-A", "--app"})


def split_worker_argv(argv: Sequence[str]) -> tuple[str, list[str]] | None:
    """``(app, worker arguments)`` when ``argv`` is ``[-A APP] worker ...``; else None.

    Without ``-A``, the app comes from ``CELERY_APP``, as Celery's command reads it.
    """
    args = list(argv)
    app = os.environ.get("CELERY_APP")
    if args and args[0] in APP_FLAGS and len(args) > 1:
        app, args = args[1], args[2:]
    elif args and args[0].startswith("--app="):
        app, args = args[0].removeprefix("--app="), args[1:]
    if not app or not args or args[0] != "worker":
        return None
    return app, args[1:]


def command_line(celery_argv: Sequence[str], *, lean: bool = True) -> list[str]:
    """A ``celery ...`` command line (its first word ``celery``), run by this interpreter:
    through this module when ``lean``, else through Celery's own ``python -m celery``."""
    rest = list(celery_argv[1:]) if celery_argv and celery_argv[0] == "celery" else [*celery_argv]
    return [sys.executable, "-m", MODULE if lean else "celery", *rest]


def _flag_from_env(name: str) -> bool:
    import click

    value = os.environ.get(name)
    return bool(value) and bool(click.BOOL.convert(value, None, None))


def run_worker(app_path: str, args: Sequence[str]) -> None:
    """Celery's ``worker`` command on ``app_path``, as ``celery -A app_path worker`` runs it.

    Exits the process with the worker's exit code (click's standalone mode).
    """
    from celery.app.utils import find_app
    from celery.bin.base import CLIContext, consume_preload_options
    from celery.bin.worker import worker

    app = find_app(app_path)
    # What the umbrella command's callback does for ``worker`` before running it.
    worker.params.extend(app.user_options.get("worker", []))
    preload = app.user_options.get("preload", ())
    if preload:
        worker.params.extend(preload)
        worker.callback = consume_preload_options(worker.callback)
    context = CLIContext(
        app=app, no_color=_flag_from_env("CELERY_NO_COLOR"), workdir=None, quiet=False
    )
    worker.main(
        args=list(args), prog_name=PROG_NAME, obj=context, auto_envvar_prefix=WORKER_ENVVAR_PREFIX
    )


def main(argv: Sequence[str] | None = None) -> None:
    """The entry point: a worker command line runs lean, any other goes to ``celery``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from celery import maybe_patch_concurrency

    # As ``celery`` does first: gevent's monkey patches before anything opens a socket.
    maybe_patch_concurrency(["celery", *argv])
    split = split_worker_argv(argv)
    if split is None:
        from celery.bin.celery import main as celery_main

        sys.argv = ["celery", *argv]
        sys.exit(celery_main())
    run_worker(*split)


if __name__ == "__main__":
    main()
