"""Stand-in machines for cluster tests: Linux network namespaces, each with its own sshd.

Each "machine" is a network namespace with one address on a private LAN, its own PID namespace
(the cluster configs' ``ray stop`` ends every Ray process its user can signal, so nodes must not
see each other's processes) and its own /tmp (every node of a Ray cluster uses the same session
folder name under /tmp). Its sshd is PID 1 there: killing it ends the whole machine. The
"laptop" is one more namespace holding the LAN's bridge; ``ray up``, ``ray dashboard`` and
``raytrain submit`` run in it. All addresses exist only inside these namespaces, which the
``Lan`` removes on exit, as it removes the SSH user it made. What the machines do not have apart:
one filesystem (a real cluster needs shared storage or gs:// for that; see docs/how-to/on-prem.md).

Needs root, iproute2 (``ip netns``), util-linux (``unshare``) and openssh-server: ``make
system-deps``.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

SSHD = "/usr/sbin/sshd"


def available() -> str | None:
    """Why machines cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, an sshd, an SSH user)"
    for tool in (SSHD, shutil.which("ip"), shutil.which("unshare"), shutil.which("rsync")):
        if not tool or not Path(tool).exists():
            return "needs openssh-server, iproute2, util-linux and rsync: make system-deps"
    return None


def _inside(namespace: str, private_tmp: Path, *args: str) -> list[str]:
    """``args`` run in network namespace ``namespace`` as PID 1 of a PID namespace of their own,
    with ``private_tmp`` as their /tmp."""
    boot = f'mount --bind {private_tmp} /tmp && exec "$@"'
    return [
        "ip",
        "netns",
        "exec",
        namespace,
        "unshare",
        "--pid",
        "--fork",
        "--mount-proc",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        boot,
        "sh",
        *args,
    ]


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


@dataclass
class Machine:
    name: str  # its network namespace
    address: str  # on the LAN
    root: Path  # its private /tmp and sshd files live here
    sshd: subprocess.Popen[bytes] | None = None

    def pid1(self) -> int | None:
        """The host's pid of the machine's PID 1 (its sshd): ``unshare --fork``'s only child."""
        if self.sshd is None or self.sshd.poll() is not None:
            return None
        children = Path(f"/proc/{self.sshd.pid}/task/{self.sshd.pid}/children").read_text().split()
        return int(children[0]) if children else None

    def processes(self) -> list[str]:
        """Command lines of every process on the machine but its sshd."""
        pid1 = self.pid1()
        if pid1 is None:
            return []
        namespace = os.readlink(f"/proc/{pid1}/ns/pid")
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == pid1:
                continue
            try:
                if os.readlink(entry / "ns" / "pid") == namespace:
                    found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue  # ended meanwhile
        return found

    def stop(self) -> None:
        """End the machine: its sshd is PID 1 of its PID namespace, so every process goes."""
        pid1 = self.pid1()
        if pid1 is not None:
            os.kill(pid1, signal.SIGKILL)
        if self.sshd is not None:
            self.sshd.wait(timeout=30)


@dataclass
class Lan:
    """A LAN of machines reached over SSH as ``user`` with ``key``; use as a context manager."""

    root: Path
    user: str = field(default_factory=lambda: f"rt{random.randrange(16**6):06x}")
    subnet: str = field(
        default_factory=lambda: f"10.{random.randrange(64, 250)}.{random.randrange(1, 250)}"
    )
    machines: list[Machine] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tag = self.user  # unique per LAN: namespace names start with it
        self.laptop = f"{self.tag}-laptop"
        self.home = self.root / "home"

    # ---- life cycle -------------------------------------------------------------------
    def __enter__(self) -> Lan:
        try:
            self._make_user()
            _run("ip", "netns", "add", self.laptop)
            ns = ("ip", "-n", self.laptop)
            _run(*ns, "link", "set", "lo", "up")
            _run(*ns, "link", "add", "br0", "type", "bridge")
            _run(*ns, "addr", "add", f"{self.subnet}.254/24", "dev", "br0")
            _run(*ns, "link", "set", "br0", "up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for machine in self.machines:
            machine.stop()
            subprocess.run(["ip", "netns", "delete", machine.name], capture_output=True)
        subprocess.run(["ip", "netns", "delete", self.laptop], capture_output=True)
        subprocess.run(["userdel", self.user], capture_output=True)

    def _make_user(self) -> None:
        """An SSH user whose home all machines share (like an NFS home), outside /tmp."""
        self.home.mkdir(parents=True)
        _run(
            "useradd",
            "--no-create-home",
            "--home-dir",
            str(self.home),
            "--shell",
            "/bin/bash",
            "--password",
            "*",  # no password, but not locked: sshd without PAM refuses a locked account
            self.user,
        )
        entry = pwd.getpwnam(self.user)
        os.chown(self.home, entry.pw_uid, entry.pw_gid)
        (self.home / ".ssh").mkdir(mode=0o700)
        os.chown(self.home / ".ssh", entry.pw_uid, entry.pw_gid)

    # ---- machines ---------------------------------------------------------------------
    def add_machine(self, authorized_key: str) -> Machine:
        """A machine on the LAN whose sshd lets ``user`` in with ``authorized_key``."""
        index = len(self.machines) + 1
        machine = Machine(f"{self.tag}-m{index}", f"{self.subnet}.{index}", self.root / f"m{index}")
        self.machines.append(machine)
        machine.root.mkdir()
        (machine.root / "tmp").mkdir(mode=0o1777)
        os.chmod(machine.root / "tmp", 0o1777)
        _run("ip", "netns", "add", machine.name)
        veth = f"v{index}{self.tag[2:8]}"
        _run(
            "ip",
            "-n",
            self.laptop,
            "link",
            "add",
            veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            machine.name,
        )
        _run("ip", "-n", self.laptop, "link", "set", veth, "master", "br0", "up")
        inside = ("ip", "-n", machine.name)
        _run(*inside, "link", "set", "lo", "up")
        _run(*inside, "addr", "add", f"{machine.address}/24", "dev", "eth0")
        _run(*inside, "link", "set", "eth0", "up")
        # Ray takes a node's address from the route to a public address (a UDP connect that
        # sends nothing); the laptop forwards nothing, so no packet leaves the LAN.
        _run(*inside, "route", "add", "default", "via", f"{self.subnet}.254")
        self._authorize(authorized_key)
        machine.sshd = self._start_sshd(machine)
        self._wait_for_ssh(machine)
        return machine

    def _authorize(self, key: str) -> None:
        entry = pwd.getpwnam(self.user)
        keys = self.home / ".ssh" / "authorized_keys"
        keys.write_text(key.strip() + "\n")
        os.chown(keys, entry.pw_uid, entry.pw_gid)
        keys.chmod(0o600)

    def _start_sshd(self, machine: Machine) -> subprocess.Popen[bytes]:
        host_key = machine.root / "host_key"
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key))
        config = machine.root / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {machine.address}",
                    "Port 22",
                    f"HostKey {host_key}",
                    f"AllowUsers {self.user}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin no",
                    "UsePAM no",
                    "PidFile none",
                    "MaxStartups 100",
                    "MaxSessions 100",
                    "",
                ]
            )
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
        log = (machine.root / "sshd.log").open("wb")
        return subprocess.Popen(
            _inside(machine.name, machine.root / "tmp", SSHD, "-D", "-e", "-f", str(config)),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait_for_ssh(self, machine: Machine, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probe = self.on_laptop(
                ["bash", "-c", f"exec 3<>/dev/tcp/{machine.address}/22"], check=False
            )
            if probe.returncode == 0:
                return
            if machine.sshd is not None and machine.sshd.poll() is not None:
                break
            time.sleep(0.2)
        log = (machine.root / "sshd.log").read_text(errors="replace")
        raise RuntimeError(f"sshd on {machine.address} did not start:\n{log}")

    # ---- the laptop -------------------------------------------------------------------
    def laptop_command(self, args: list[str]) -> list[str]:
        """``args`` run on the laptop (its network namespace; the host's files, /tmp included:
        give it a TMPDIR of its own for ``ray up``'s cluster state)."""
        return ["ip", "netns", "exec", self.laptop, *args]

    def on_laptop(
        self,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 120,
        check: bool = True,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.laptop_command(args),
            env=env,
            cwd=cwd,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            output = f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}\n{output}")
        return result

    def on_machine(
        self, machine: Machine, command: str, key: Path, *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``command`` on ``machine`` over SSH, as the cluster's user (a login shell: its venv)."""
        return self.on_laptop(
            [
                "ssh",
                "-i",
                str(key),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "BatchMode=yes",
                f"{self.user}@{machine.address}",
                command,
            ],
            check=check,
            timeout=timeout,
        )
