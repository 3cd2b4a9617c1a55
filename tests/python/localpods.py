"""Run the containers of rendered pod specs (or compose services) as local processes.

Deployment tests render a Helm chart or a compose file and then run, on this machine,
exactly the command and environment each container would get, so that what the
manifests say is what gets tested. What a container runtime would add is replaced by
three small things:

* names: every "pod" gets its own loopback address (127.A.B.x, from a random block per
  test so concurrent runs do not collide; Linux routes all of 127/8 to `lo`), and every
  process runs in a private mount namespace (`unshare --mount`, which needs root) with
  a hosts file bind-mounted over /etc/hosts that maps the pods' DNS names to those
  addresses. Processes resolve the names as they would in the cluster.
* listeners: a value that binds every interface (`0.0.0.0:PORT`, `[::]:PORT`) in the
  arguments or the environment becomes `<the pod's address>:PORT`; ports stay as
  written, since each pod has an address of its own.
* paths: a container path (a volume's mount path) in the arguments or the environment
  is replaced by a local directory standing in for the volume.

`Sandbox(root, hosts)` holds the hosts file. `sandbox.start(name, argv, env, ...)` starts
a long-running process (a `LocalProcess`: `running()`, `stop()`, `kill()`, `log_text()`);
`argv` and `env` are the manifest's, rewritten as above, while `entrypoint` and
`base_env` (what the image and the runtime add: host paths) are taken as they are.
`sandbox.run(...)` runs a one-shot process (an init container, a client) to completion,
and `sandbox.cleanup()` stops whatever still runs. Nothing here knows about Kubernetes or
compose: the callers turn their manifests into argv and env.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
MOUNT = shutil.which("mount") or "/bin/mount"
SH = "/bin/sh"

# In the private mount namespace: put the hosts file over /etc/hosts, then become the
# command (exec, so the process we started is the command itself and gets our signals).
_BIND_HOSTS = f'{MOUNT} --bind "$0" /etc/hosts && exec "$@"'

_WILDCARD = re.compile(r"(?:0\.0\.0\.0|\[::\]):(\d+)")


def loopback_block() -> str:
    """A random "127.A.B" prefix; pods get 127.A.B.1, 127.A.B.2, ... (127.0.x.x, which
    other tests use, is avoided)."""
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"


def rewrite_listen(value: str, ip: str) -> str:
    """`0.0.0.0:9092` / `[::]:9092` -> `<ip>:9092`, anywhere in `value`."""
    return _WILDCARD.sub(lambda m: f"{ip}:{m.group(1)}", value)


def rewrite_paths(value: str, paths: dict[str, str | Path]) -> str:
    """Replaces each container path in `value` (as a whole path or a prefix of one, at a
    path boundary) by its local directory. One pass, longest path first, so a local
    directory is never rewritten again."""
    if not paths:
        return value
    keys = sorted((p.rstrip("/") for p in paths), key=len, reverse=True)
    local = {p.rstrip("/"): str(d) for p, d in paths.items()}
    pattern = re.compile(
        r"(?<![\w./-])(" + "|".join(re.escape(k) for k in keys) + r")(?=/|$|[^\w.-])"
    )
    return pattern.sub(lambda m: local[m.group(1)], value)


def _log_tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no output)"


class LocalProcess:
    """One process started by a Sandbox; its stdout and stderr go to `log_path`."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait up to `timeout` (SIGKILL after that). Returns the exit code
        (negative: killed by that signal)."""
        if not self.running():
            return self.returncode() if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name} did not exit within {timeout:.0f}s of SIGTERM; log tail:\n"
                + self.log_tail()
            ) from None

    def kill(self) -> None:
        """SIGKILL to the process and anything it started in its session."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return _log_tail(self.log_path, lines)


class Sandbox:
    """A hosts file (name -> address) and the processes that run with it as /etc/hosts.

    `hosts` maps DNS names to addresses; localhost entries are added. Every process gets
    exactly the environment it is given (nothing is inherited from the test), with
    listen addresses rewritten to `listen_ip` and container paths to `paths`.
    """

    def __init__(self, root: Path, hosts: dict[str, str]):
        if os.geteuid() != 0:
            raise PermissionError("localpods needs root: it runs processes under unshare --mount")
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.hosts_path = root / "hosts"
        self.hosts = dict(hosts)
        self.processes: list[LocalProcess] = []
        self.write_hosts()

    def write_hosts(self) -> None:
        """(Re)writes the hosts file; running processes see changes at their next lookup."""
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
        lines += [f"{ip} {name}" for name, ip in sorted(self.hosts.items())]
        tmp = self.hosts_path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        # In place (not a rename): the bind mounts refer to this inode.
        self.hosts_path.touch()
        with open(self.hosts_path, "r+") as f:
            f.truncate(0)
            f.write(tmp.read_text())
        tmp.unlink()

    def command(
        self,
        argv: list[str],
        env: dict[str, str],
        listen_ip: str | None = None,
        paths: dict[str, str | Path] | None = None,
        entrypoint: list[str] | None = None,
        base_env: dict[str, str] | None = None,
    ) -> tuple[list[str], dict[str, str]]:
        """The argv and env a process is started with: `argv` and `env` (from the
        manifest) rewritten, after `entrypoint` and over `base_env` (what the image and
        the runtime provide: host paths, taken as they are)."""

        def fix(value: str) -> str:
            value = rewrite_paths(value, paths or {})
            return rewrite_listen(value, listen_ip) if listen_ip else value

        argv = [*(entrypoint or []), *(fix(a) for a in argv)]
        env = {**(base_env or {}), **{k: fix(v) for k, v in env.items()}}
        return argv, env

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` in a private mount namespace with the hosts file as /etc/hosts."""
        return [UNSHARE, "--mount", "--", SH, "-c", _BIND_HOSTS, str(self.hosts_path), *argv]

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        listen_ip: str | None = None,
        paths: dict[str, str | Path] | None = None,
        cwd: Path | None = None,
        entrypoint: list[str] | None = None,
        base_env: dict[str, str] | None = None,
    ) -> LocalProcess:
        """Starts a long-running process; output goes to <root>/<name>.log."""
        argv, env = self.command(argv, env, listen_ip, paths, entrypoint, base_env)
        p = LocalProcess(name, argv, env, self.root / f"{name}.log")
        log = open(p.log_path, "ab", buffering=0)
        try:
            p.proc = subprocess.Popen(
                self.wrap(argv),
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self.processes.append(p)
        return p

    def run(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        timeout: float,
        listen_ip: str | None = None,
        paths: dict[str, str | Path] | None = None,
        cwd: Path | None = None,
        entrypoint: list[str] | None = None,
        base_env: dict[str, str] | None = None,
    ) -> tuple[int, str]:
        """Runs a one-shot process to completion: (exit code, output). Killed (with an
        AssertionError) if it takes longer than `timeout`."""
        p = self.start(name, argv, env, listen_ip, paths, cwd, entrypoint, base_env)
        try:
            code = p.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            raise AssertionError(
                f"{name} did not finish within {timeout:.0f}s; output:\n{p.log_tail()}"
            ) from None
        return code, p.log_text()

    def cleanup(self, timeout: float = 30.0) -> None:
        """Stops every process still running: SIGTERM to all, then SIGKILL to whatever
        has not exited after `timeout`."""
        live = [p for p in self.processes if p.running()]
        for p in live:
            p.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in live:
            try:
                p.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            p.kill()
