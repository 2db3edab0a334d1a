"""``shardws install-service``: put this installation's systemd unit, config and sysctl
file in place on a host.

What it writes, under ``root`` (``/`` unless ``--root DIR``):

* ``/etc/systemd/system/shardws.service``: the shipped ``systemd/shardws.service`` with
  ``ExecStart=`` and ``ExecStartPre=`` pointing at the shardws of this installation
  (see ``shardws_command``). Rewritten when it differs, so running the command again
  after an upgrade or after moving the virtualenv updates the unit.
* ``/etc/shardws/shardws.toml``: ``shardws.example.toml`` (every option at its default),
  only when no file is there. An existing config is never overwritten.
* ``/etc/sysctl.d/99-shardws.conf``: ``sysctl/99-shardws.conf``, unless ``sysctl=False``.
  Into ``/``, every value this host already has beyond the recommendation is kept
  (``tune.host_sysctl_text``): applying the file raises what is too low and lowers
  nothing. Under another ``root`` the live values are not the target's, so the shipped
  file goes in as it is. Installed, not applied: ``sysctl --system`` applies it.

Guarantees: every action is printed, one line each; a second run changes nothing and
says so; a dry run prints the same actions prefixed with "would" and writes nothing; a
file is written under a temporary name and renamed, so nobody reads half a file.
Enabling (``systemctl daemon-reload`` and ``systemctl enable --now shardws``) happens
only when asked, when ``root`` is ``/`` and when systemd is PID 1; otherwise the output
says that it was skipped and why.

The three source files ship inside the package (``shardws/shardws.service``,
``shardws/shardws.example.toml``, ``shardws/sysctl.conf`` are links to the top-level
files, resolved when the wheel is built), so an installed wheel has them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shardws.server import systemd
from shardws.tools.tune import SYSCTL_FILE, host_sysctl_text, read_sysctl

PACKAGE_DIR = Path(__file__).parent.parent  # the data files sit at the package root
UNIT_FILE = PACKAGE_DIR / "shardws.service"
EXAMPLE_CONFIG = PACKAGE_DIR / "shardws.example.toml"

UNIT_TARGET = Path("/etc/systemd/system/shardws.service")
CONFIG_TARGET = Path("/etc/shardws/shardws.toml")
SYSCTL_TARGET = Path("/etc/sysctl.d/99-shardws.conf")

# Directories the unit's sandbox hides from the service: ProtectHome=yes (the first
# three) and PrivateTmp=yes (the last two). A shardws installed there cannot start.
HIDDEN_FROM_SERVICE = ("/home", "/root", "/run/user", "/tmp", "/var/tmp")

ENABLE_COMMANDS = (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", "shardws"])


class InstallError(Exception):
    """Something the user can fix (permissions, a missing systemctl); the message says
    what failed."""


def shardws_command() -> list[str]:
    """The absolute command that runs this installation's shardws.

    In order: the ``shardws`` script this process was started as (``sys.argv[0]``); the
    ``shardws`` script beside this interpreter (a virtualenv's ``bin/``); otherwise this
    interpreter with ``-m shardws``. A ``shardws`` found on ``PATH`` is not used: it may
    belong to another installation than the one running this command.
    """
    started_as = sys.argv[0]
    if os.path.basename(started_as) == "shardws" and os.access(started_as, os.X_OK):
        return [os.path.abspath(started_as)]
    beside = Path(sys.executable).parent / "shardws"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    return [os.path.abspath(sys.executable), "-m", "shardws"]


def systemd_quote(word: str) -> str:
    """``word`` as one argument of a systemd ``Exec*=`` line: ``%`` and ``$`` escaped
    (specifiers and variable expansion), double-quoted when it has blanks or quotes."""
    word = word.replace("%", "%%").replace("$", "$$")
    if any(char.isspace() or char in "\"'\\" for char in word):
        word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def unit_text(command: list[str], template: str | None = None) -> str:
    """The shipped unit with the program of every ``ExecStart=`` / ``ExecStartPre=``
    line whose program is a ``shardws`` replaced by ``command``.

    Raises ``InstallError`` if the template has no such ``ExecStart=`` line (the unit
    and this code went out of step).
    """
    text = UNIT_FILE.read_text() if template is None else template
    program = " ".join(systemd_quote(word) for word in command)
    lines, replaced = [], 0
    for line in text.splitlines(keepends=True):
        key, equals, value = line.partition("=")
        if equals and key in ("ExecStart", "ExecStartPre"):
            # "-", "@", ":", "+", "!" before the program are systemd's prefixes: keep them.
            value = value.lstrip()
            body = value.lstrip("-@:+!")
            prefixes = value[: len(value) - len(body)]
            words = body.split()
            current = words[0] if words else ""
            if os.path.basename(current) == "shardws":
                line = f"{key}={prefixes}{program}{body[len(current) :]}"
                if key == "ExecStart":
                    replaced += 1
        lines.append(line)
    if not replaced:
        raise InstallError(f"{UNIT_FILE}: no ExecStart= line runs shardws")
    return "".join(lines)


@dataclass(frozen=True)
class Placement:
    """One file to install: ``target`` is its path on the target system."""

    target: Path
    content: bytes
    source: Path
    overwrite: bool  # False: an existing file is kept as it is


def placements(
    command: list[str],
    sysctl: bool = True,
    read: Callable[[str], str | None] | None = None,
) -> list[Placement]:
    """The files ``install-service`` installs, in order. ``read`` gives the live value of
    a sysctl key on the target system: the sysctl file keeps the values it has beyond
    the recommendation. None: the target's values are unknown, the shipped file as is."""
    files = [
        Placement(UNIT_TARGET, unit_text(command).encode(), UNIT_FILE, overwrite=True),
        Placement(CONFIG_TARGET, EXAMPLE_CONFIG.read_bytes(), EXAMPLE_CONFIG, overwrite=False),
    ]
    if sysctl:
        content = SYSCTL_FILE.read_bytes() if read is None else host_sysctl_text(read).encode()
        files.append(Placement(SYSCTL_TARGET, content, SYSCTL_FILE, True))
    return files


def under(root: Path, target: Path) -> Path:
    """``target`` (absolute) relocated below ``root``."""
    return root / target.relative_to("/")


def place(placement: Placement, root: Path, dry_run: bool) -> str:
    """Install one file (mode 0644, parent directories 0755) unless ``dry_run``; returns
    the line describing what was (or would be) done."""
    path = under(root, placement.target)
    would = "would " if dry_run else ""
    if path.exists():
        if not placement.overwrite:
            return f"kept {path}: it exists and is never overwritten"
        if path.read_bytes() == placement.content:
            return f"unchanged {path}"
        verb = "update"
    else:
        verb = "create"
    if not dry_run:
        _write(path, placement.content)
    return f"{would}{verb} {path} (from {placement.source.name})"


def _write(path: Path, content: bytes) -> None:
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(content)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


def enable(root: Path, dry_run: bool, booted: Callable[[], bool] = systemd.booted) -> list[str]:
    """Reload systemd and enable and start the unit, if this can manage the running
    system; the lines say what was done or why it was skipped. Raises ``InstallError``
    if a ``systemctl`` command fails."""
    if root.resolve() != Path("/"):
        return [f"skipped enabling: the files went under {root}, not into this system"]
    if not booted():
        return [
            "skipped enabling: systemd is not PID 1 here (no /run/systemd/system), so"
            " systemctl cannot start the service; run `shardws serve -c"
            f" {CONFIG_TARGET}` under this system's process manager instead"
        ]
    done = []
    for command in ENABLE_COMMANDS:
        line = " ".join(command)
        if dry_run:
            done.append(f"would run {line}")
            continue
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InstallError(f"{line}: {exc}") from exc
        if result.returncode != 0:
            raise InstallError(f"{line} failed ({result.returncode}): {result.stderr.strip()}")
        done.append(f"ran {line}")
    return done


def hidden_location_warning(command: list[str]) -> str | None:
    """A warning if this installation lives where the unit's sandbox hides it."""
    for path in (command[0], sys.prefix):
        for hidden in HIDDEN_FROM_SERVICE:
            if path == hidden or path.startswith(hidden + "/"):
                return (
                    f"warning: {path} is under {hidden}, which the unit hides from the service"
                    " (ProtectHome=yes, PrivateTmp=yes): install shardws elsewhere (e.g. a"
                    " virtualenv in /opt/shardws) and run install-service from there"
                )
    return None


def run(
    root: Path | None,
    dry_run: bool = False,
    sysctl: bool = True,
    enable_service: bool = False,
    command: list[str] | None = None,
    booted: Callable[[], bool] = systemd.booted,
) -> int:
    """``shardws install-service``: prints one line per action; returns the exit code
    (0 done, 1 a write or systemctl failed, 2 not root without ``--root``)."""
    if root is None and os.geteuid() != 0 and not dry_run:
        print(
            "shardws install-service: installing into / needs root (run it with sudo), or"
            " give --root DIR to install under another directory",
            file=sys.stderr,
        )
        return 2
    root = Path("/") if root is None else root.absolute()
    command = shardws_command() if command is None else command
    try:
        # Into this system: its live kernel values are the target's.
        read = read_sysctl if root == Path("/") else None
        for placement in placements(command, sysctl, read):
            print(place(placement, root, dry_run), flush=True)
        print(f"ExecStart runs {' '.join(command)}", flush=True)
        warning = hidden_location_warning(command)
        if warning:
            print(warning, flush=True)
        if enable_service:
            for line in enable(root, dry_run, booted):
                print(line, flush=True)
    except (InstallError, OSError) as exc:
        print(f"shardws install-service: {exc}", file=sys.stderr)
        return 1
    if sysctl and not dry_run and root == Path("/"):
        print("apply the kernel settings now with: sysctl --system")
    if not enable_service and not dry_run and root == Path("/"):
        print("start it with: systemctl daemon-reload && systemctl enable --now shardws")
    return 0
