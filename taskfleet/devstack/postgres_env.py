"""How the embedded PostgreSQL's programs are found and run, and what they leave behind.

The binaries are the ones bundled in the ``pgserver`` package. They run with a clean
environment (no ``PG*`` overrides) and, when taskfleet runs as root, as the unprivileged
system user :data:`~taskfleet.devstack.common.ROOT_RUN_AS_USER` (PostgreSQL refuses to run
as root), created and given access with the helpers of ``pgserver`` itself. A running
postmaster describes itself in ``PGDATA/postmaster.pid``, parsed here.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskfleet.devstack.common import ROOT_RUN_AS_USER, DevStackError
from taskfleet.devstack.packages import EMBEDDED_EXTRA_INSTALL, POSTGRES_PACKAGE, package_dir

_permissions_prepared = False


def pg_bin_dir() -> Path:
    """Locate the PostgreSQL binaries bundled in the ``pgserver`` package.

    Raises:
        DevStackError: ``pgserver`` is not installed.
    """
    package = package_dir(POSTGRES_PACKAGE)
    if package is not None:
        bin_dir = package / "pginstall" / "bin"
        if (bin_dir / "pg_ctl").is_file():
            return bin_dir
    raise DevStackError(
        f"PostgreSQL binaries not found: the embedded stack needs the {POSTGRES_PACKAGE!r} "
        f"package, which bundles them ({EMBEDDED_EXTRA_INSTALL})"
    )


def clean_env() -> dict[str, str]:
    """The environment minus ``PG*`` variables, which would override our explicit options."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def import_pgserver_utils() -> Any:
    """Import ``pgserver.utils`` quietly (its package import warns about XDG_RUNTIME_DIR)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver.utils

    return pgserver.utils


@dataclass(frozen=True)
class RunAs:
    """The unprivileged user PostgreSQL runs as when we are root.

    Attributes:
        name: User name.
        uid: Its user id.
        gid: Its primary group id.
    """

    name: str
    uid: int
    gid: int

    def subprocess_kwargs(self) -> dict[str, Any]:
        """Keyword arguments making ``subprocess`` run a program as this user."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def pg_run_as() -> RunAs | None:
    """Return the user to run PostgreSQL as, or None when not root.

    Reuses pgserver's root logic: create the ``pgserver`` system user if needed
    (``pgserver.utils.ensure_user_exists``, which runs ``useradd``).

    Raises:
        DevStackError: The user could not be created.
    """
    if os.geteuid() != 0:
        return None
    import pwd

    utils = import_pgserver_utils()
    try:
        utils.ensure_user_exists(ROOT_RUN_AS_USER)
        entry = pwd.getpwnam(ROOT_RUN_AS_USER)
    except (OSError, KeyError, subprocess.CalledProcessError) as exc:
        raise DevStackError(
            f"running as root: could not create the unprivileged user {ROOT_RUN_AS_USER!r} "
            f"that PostgreSQL must run as ({exc})"
        ) from exc
    return RunAs(ROOT_RUN_AS_USER, entry.pw_uid, entry.pw_gid)


def prepare_root_permissions(pgdata: Path, bin_dir: Path) -> None:
    """Let the unprivileged user reach ``pgdata`` and the bundled binaries.

    Same steps as ``pgserver.PostgresServer.ensure_pgdata_inited``: add ``g+rx,o+rx`` to
    every ancestor of ``pgdata`` and of the install, and make the install readable.
    """
    global _permissions_prepared
    utils = import_pgserver_utils()
    utils.ensure_prefix_permissions(pgdata)
    if _permissions_prepared:
        return
    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    utils.ensure_prefix_permissions(bin_dir)
    utils.ensure_folder_permissions(bin_dir, execute | read)
    for sub in ("lib", "share"):
        if (bin_dir.parent / sub).is_dir():
            utils.ensure_folder_permissions(bin_dir.parent / sub, read)
    _permissions_prepared = True


@dataclass(frozen=True)
class PostmasterInfo:
    """The parts of ``PGDATA/postmaster.pid`` we use."""

    pid: int
    port: int | None
    status: str


def read_postmaster_pid(pgdata: Path) -> PostmasterInfo | None:
    """Parse ``pgdata/postmaster.pid``; None when missing or malformed."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    try:
        pid = int(lines[0].strip())
    except (IndexError, ValueError):
        return None
    port: int | None = None
    with contextlib.suppress(IndexError, ValueError):
        port = int(lines[3].strip())
    status = lines[7].strip() if len(lines) > 7 else ""
    return PostmasterInfo(pid, port, status)


def run_pg_program(
    args: list[str],
    run_as: RunAs | None,
    timeout: float,
    cwd: Path,
    log_path: Path,
    stdin_text: str = "",
) -> subprocess.CompletedProcess[bytes]:
    """Run a bundled PostgreSQL program, its output appended to ``log_path``.

    Args:
        args: Program name (e.g. ``pg_ctl``) and arguments.
        run_as: The user to run it as (root only), or None.
        timeout: Seconds it may take.
        cwd: Its working directory.
        log_path: The postgres log.
        stdin_text: What to feed it on stdin.

    Returns:
        The finished process (its status is not checked).

    Raises:
        DevStackError: It could not run or did not finish within ``timeout``.
    """
    exe = pg_bin_dir() / args[0]
    with log_path.open("ab") as log:
        if run_as is not None:
            os.fchown(log.fileno(), run_as.uid, run_as.gid)
        try:
            return subprocess.run(
                [str(exe), *args[1:]],
                input=stdin_text.encode(),
                stdout=log,
                stderr=log,
                cwd=cwd,
                env=clean_env(),
                start_new_session=True,
                timeout=timeout,
                check=False,
                **(run_as.subprocess_kwargs() if run_as else {}),
            )
        except subprocess.TimeoutExpired as exc:
            raise DevStackError(
                f"{args[0]} did not finish within {timeout:.0f}s", log_path
            ) from exc
        except OSError as exc:
            raise DevStackError(f"could not run {exe}: {exc}", log_path) from exc
