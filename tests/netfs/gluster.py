"""A private GlusterFS for the tests: one glusterd of our own, one single-brick volume per test
worker on loopback, and three FUSE client mounts (one per simulated node, each a separate
client process with its own attribute, entry and content caches).

The glusterd has its own working and run directories under `STATE`, binds 127.0.0.1 and is
shared by the pytest-xdist workers of one session (its brick processes can only reach glusterd
on the standard port 24007, so there can be one): the first worker starts it, the last one to
leave stops it, by PID. Nothing here touches a system glusterd or another user's volumes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

STATE = Path(os.environ.get("KSERVE_CACHE_GLUSTER_STATE", "/tmp/kserve-cache-glusterd"))
PORT = 24007
HOST_CANDIDATES = ("kserve-cache-gluster", socket.gethostname(), "vm", "runsc")
BINARIES = ("glusterd", "glusterfs", "gluster", "umount")
NODES = 3
START_TIMEOUT = 30.0


class GlusterError(RuntimeError):
    """The gluster CLI or a daemon failed."""


def loopback_host() -> str | None:
    """A host name (not `localhost`) that resolves to 127.x: gluster refuses loopback addresses."""
    override = os.environ.get("KSERVE_CACHE_GLUSTER_HOST")
    for name in (override, *HOST_CANDIDATES) if override else HOST_CANDIDATES:
        if not name or name == "localhost":
            continue
        try:
            if socket.gethostbyname(name).startswith("127."):
                return name
        except OSError:
            continue
    return None


def unavailable_reason() -> str | None:
    """Why the gluster harness cannot run here, or None when it can."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"GlusterFS not installed (missing {', '.join(missing)}; apt glusterfs-server)"
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse: FUSE is unavailable"
    if os.geteuid() != 0:
        return "glusterd and FUSE mounts need root"
    if loopback_host() is None:
        return (
            "no host name resolves to 127.0.0.1 besides localhost "
            "(add '127.0.0.1 kserve-cache-gluster' to /etc/hosts)"
        )
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); it is dead for our purposes.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _stop_pid(pid: int, *, timeout: float = 10.0) -> None:
    if not _alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < end:
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    STATE.mkdir(parents=True, exist_ok=True)
    with (STATE / "lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


GLUSTERD_VOL = """\
volume management
    type mgmt/glusterd
    option working-directory {wd}
    option run-directory {run}
    option glusterd-sockfile {sock}
    option transport-type socket
    option transport.socket.bind-address 127.0.0.1
    option transport.socket.listen-port {port}
    option transport.socket.read-fail-log off
    option ping-timeout 0
    option event-threads 1
    option base-port 49300
    option max-port 49999
end-volume
"""


@dataclass
class Glusterd:
    """The shared private glusterd; `join()` starts it or joins the running one."""

    state: Path = STATE

    @property
    def run_dir(self) -> Path:
        return self.state / "run"

    @property
    def sock(self) -> Path:
        return self.run_dir / "glusterd.socket"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "glusterd.pid"

    @property
    def users(self) -> Path:
        return self.state / "users"

    def cli(self, *args: str, check: bool = True) -> str:
        """One gluster CLI command against our glusterd (retried while another op runs)."""
        cmd = [
            "gluster",
            f"--glusterd-sock={self.sock}",
            "--mode=script",
            f"--log-file={self.state / 'log' / 'cli.log'}",
            *args,
        ]
        for _ in range(40):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
            out = proc.stdout + proc.stderr
            if proc.returncode == 0 or not check:
                return out
            if "Another transaction" in out or "locking failed" in out.lower():
                time.sleep(0.25)
                continue
            raise GlusterError(f"gluster {' '.join(args)} failed ({proc.returncode}): {out}")
        raise GlusterError(f"gluster {' '.join(args)}: glusterd stayed busy")

    def _running(self) -> bool:
        pid = _read_pid(self.pid_file)
        return pid is not None and _alive(pid) and self.sock.exists()

    def join(self) -> None:
        with _locked():
            self.users.mkdir(parents=True, exist_ok=True)
            self._prune_users()
            if not self._running():
                self._start()
            (self.users / str(os.getpid())).touch()

    def leave(self) -> None:
        with _locked():
            with contextlib.suppress(FileNotFoundError):
                (self.users / str(os.getpid())).unlink()
            self._prune_users()
            if not any(self.users.iterdir()):
                self._stop()

    def _prune_users(self) -> None:
        for entry in self.users.iterdir():
            if not entry.name.isdigit() or not _alive(int(entry.name)):
                entry.unlink()

    def _start(self) -> None:
        self._stop()  # leftovers of a session that was killed
        if _port_in_use(PORT):
            raise GlusterError(
                f"port {PORT} is taken by another glusterd (not ours): stop it to run these tests"
            )
        for sub in ("wd", "run", "log"):
            shutil.rmtree(self.state / sub, ignore_errors=True)
            (self.state / sub).mkdir(parents=True)
        Path("/var/run/gluster").mkdir(parents=True, exist_ok=True)  # brick sockets go there
        vol = self.state / "glusterd.vol"
        vol.write_text(
            GLUSTERD_VOL.format(wd=self.state / "wd", run=self.run_dir, sock=self.sock, port=PORT)
        )
        subprocess.run(
            [
                "glusterd",
                "-f",
                str(vol),
                "-p",
                str(self.pid_file),
                "-l",
                str(self.state / "log" / "glusterd.log"),
            ],
            check=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        end = time.monotonic() + START_TIMEOUT
        while time.monotonic() < end:
            if self._running() and "Number of Peers" in self.cli("peer", "status", check=False):
                return
            time.sleep(0.1)
        raise GlusterError(f"glusterd did not start; see {self.state / 'log' / 'glusterd.log'}")

    def _stop(self) -> None:
        # Brick processes first (their pid files are in our run directory), then glusterd.
        vols = self.run_dir / "vols"
        if vols.is_dir():
            for pid_file in vols.rglob("*.pid"):
                pid = _read_pid(pid_file)
                if pid is not None:
                    _stop_pid(pid)
        pid = _read_pid(self.pid_file)
        if pid is not None:
            _stop_pid(pid)
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()


@dataclass
class Mount:
    """One FUSE client (`glusterfs` process) of the volume: one simulated node."""

    index: int
    path: Path
    pid_file: Path
    log: Path

    @property
    def pid(self) -> int | None:
        return _read_pid(self.pid_file)

    def unmount(self) -> None:
        pid = self.pid
        if os.path.ismount(self.path):
            proc = subprocess.run(["umount", str(self.path)], capture_output=True, check=False)
            if proc.returncode != 0:
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)
        if pid is not None:
            end = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < end:
                time.sleep(0.05)
            _stop_pid(pid)


@dataclass
class Volume:
    """This worker's single-brick volume and its client mounts."""

    glusterd: Glusterd
    host: str
    name: str = field(default_factory=lambda: f"kc{os.getpid()}")
    options: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return self.glusterd.state / "volumes" / self.name

    @property
    def brick(self) -> Path:
        """The brick folder: the server's own view, behind every client cache."""
        return self.home / "brick"

    def create(self) -> None:
        self._delete_orphans()
        shutil.rmtree(self.home, ignore_errors=True)
        self.brick.mkdir(parents=True)
        # `force`: the brick is on the root filesystem.
        self.glusterd.cli("volume", "create", self.name, f"{self.host}:{self.brick}", "force")
        self.glusterd.cli("volume", "start", self.name)

    def _delete_orphans(self) -> None:
        # Volumes of workers that died without cleaning up (their pid is in the name).
        out = self.glusterd.cli("volume", "list", check=False)
        for name in out.split():
            if name.startswith("kc") and name[2:].isdigit() and not _alive(int(name[2:])):
                self.glusterd.cli("volume", "stop", name, "force", check=False)
                self.glusterd.cli("volume", "delete", name, check=False)
                shutil.rmtree(self.glusterd.state / "volumes" / name, ignore_errors=True)

    def configure(self, options: Mapping[str, str]) -> list[Path]:
        """Make the volume carry exactly `options` and mount NODES fresh clients if needed.

        Keys with a dot are volume options (`performance.md-cache-timeout`); keys starting with
        `--` are arguments of the client mounts (`--attribute-timeout`). New clients load the
        current volfile, so no client runs with options from before.
        """
        wanted = dict(options)
        if wanted == self.options and len(self.mounts) == NODES:
            return [m.path for m in self.mounts]
        self.unmount_all()
        for key in self.options:
            if not key.startswith("--") and key not in wanted:
                self.glusterd.cli("volume", "reset", self.name, key)
        for key, value in wanted.items():
            if not key.startswith("--"):
                self.glusterd.cli("volume", "set", self.name, key, value)
        self.options = wanted
        mount_args = [f"{k}={v}" for k, v in wanted.items() if k.startswith("--")]
        for index in range(NODES):
            self.mounts.append(self._mount(index, mount_args))
        return [m.path for m in self.mounts]

    def _mount(self, index: int, extra: list[str]) -> Mount:
        path = self.home / f"node{index}"
        path.mkdir(parents=True, exist_ok=True)
        mount = Mount(
            index=index,
            path=path,
            pid_file=self.home / f"node{index}.pid",
            log=self.home / f"node{index}.log",
        )
        subprocess.run(
            [
                "glusterfs",
                f"--volfile-server={self.host}",
                f"--volfile-id={self.name}",
                f"--pid-file={mount.pid_file}",
                f"--log-file={mount.log}",
                *extra,
                str(path),
            ],
            check=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        end = time.monotonic() + START_TIMEOUT
        while time.monotonic() < end:
            if os.path.ismount(path):
                with contextlib.suppress(OSError):
                    next(path.iterdir(), None)
                    return mount
            time.sleep(0.05)
        mount.unmount()
        raise GlusterError(f"client mount {path} did not come up; see {mount.log}")

    def unmount_all(self) -> None:
        while self.mounts:
            self.mounts.pop().unmount()

    def destroy(self) -> None:
        self.unmount_all()
        self.glusterd.cli("volume", "stop", self.name, "force", check=False)
        self.glusterd.cli("volume", "delete", self.name, check=False)
        shutil.rmtree(self.home, ignore_errors=True)


@contextlib.contextmanager
def gluster_volume() -> Iterator[Volume]:
    """Start (or join) the private glusterd, create this worker's volume; tear both down."""
    host = loopback_host()
    if host is None:
        raise GlusterError("no loopback host name for the brick")
    glusterd = Glusterd()
    glusterd.join()
    try:
        volume = Volume(glusterd, host)
        with _locked():
            volume.create()
        try:
            yield volume
        finally:
            with _locked():
                volume.destroy()
    finally:
        glusterd.leave()
