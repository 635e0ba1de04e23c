"""Real etcd processes on loopback for tests: one member or a cluster of three.

Each member runs as ``nobody`` (when we are root) with its own free ports and
a data dir in a temporary directory that ``close()`` removes. Only PIDs this
module started are ever signalled. Optional TLS (certificates made with the
``openssl`` CLI) and user/password auth (enabled with ``etcdctl``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from integration.lab import procs

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
ROOT_PASSWORD = "root-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def refusing_url() -> Iterator[str]:
    """An http URL on loopback that refuses connections for as long as it is open.

    The port is bound but not listening: unlike a ``free_port()`` left unused,
    no other process can start listening on it meanwhile.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls(directory: Path) -> TlsFiles:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca-key.pem"
    days = ["-days", "2"]
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", *days, "-subj", "/CN=dbvip test CA",
             "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip

    def issue(name: str, extensions: str) -> tuple[Path, Path]:
        cert, key, csr = (directory / f"{name}{s}.pem" for s in ("", "-key", "-csr"))
        ext = directory / f"{name}.ext"
        ext.write_text(extensions)
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", str(key), "-out", str(csr))  # fmt: skip
        ca_args = ["-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial"]
        _openssl("x509", "-req", "-in", str(csr), *ca_args, *days, "-extfile", str(ext),
                 "-out", str(cert))  # fmt: skip
        return cert, key

    server = issue(
        "server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    client = issue("client", "extendedKeyUsage=clientAuth\n")
    return TlsFiles(ca, *server, *client)


@dataclass
class EtcdMember:
    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid


@dataclass
class EtcdCluster:
    """``size`` members on loopback; use as a context manager or call close()."""

    size: int = 1
    tls: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dbvip-etcd-")))
    members: list[EtcdMember] = field(default_factory=list)
    tls_files: TlsFiles | None = None
    auth_user: tuple[str, str] | None = None
    # Run the members inside this network namespace (on its loopback), for
    # sidecars that live there; health checks and etcdctl then go through it.
    netns: str | None = None
    host: str = "127.0.0.1"  # client address; peers stay on loopback
    # One address per member (all in ``netns``): member i then serves clients
    # on member_hosts[i]:2379 and peers on member_hosts[i]:2380, like a real
    # cluster, so one member can be cut off or stopped by its address.
    member_hosts: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()

    def _in_netns(self, cmd: list[str]) -> list[str]:
        return cmd if self.netns is None else ["ip", "netns", "exec", self.netns, *cmd]

    def __post_init__(self) -> None:
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if self.tls:
                self.tls_files = make_tls(self.workdir / "tls")
            scheme = "https" if self.tls else "http"
            if self.member_hosts and len(self.member_hosts) != self.size:
                raise ValueError(f"{self.size} members need {self.size} member_hosts")
            for i in range(self.size):
                if self.member_hosts:
                    client_url = f"{scheme}://{self.member_hosts[i]}:2379"
                    peer_url = f"http://{self.member_hosts[i]}:2380"
                else:
                    client_url = f"{scheme}://{self.host}:{free_port()}"
                    peer_url = f"http://127.0.0.1:{free_port()}"
                self.members.append(
                    EtcdMember(
                        name=f"m{i}",
                        client_url=client_url,
                        peer_url=peer_url,
                        data_dir=self.workdir / f"m{i}.etcd",
                        log_path=self.workdir / f"m{i}.log",
                    )
                )
            if os.geteuid() == 0:
                # etcd runs as nobody: it must be able to enter the dir and read its keys.
                for path in [self.workdir, *self.workdir.rglob("*")]:
                    os.chown(path, 65534, 65534)
            for member in self.members:
                self._spawn(member)
            self.wait_healthy()
        except BaseException:
            self.close()
            raise

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def _spawn(self, member: EtcdMember) -> None:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        cmd = [
            ETCD,
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={initial}",
            "--initial-cluster-token=dbvip-test",
            "--heartbeat-interval=20",
            "--election-timeout=200",
            "--log-level=warn",
            *self.extra_args,
        ]
        if self.tls_files is not None:
            files = self.tls_files
            cmd += [f"--cert-file={files.server_cert}", f"--key-file={files.server_key}",
                    f"--trusted-ca-file={files.ca}", "--client-cert-auth"]  # fmt: skip
        if os.geteuid() == 0:
            cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *cmd]
        cmd = self._in_netns(cmd)  # ip netns exec and setpriv exec: the PID stays etcd's
        with member.log_path.open("ab") as log:
            member.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    # -- readiness --------------------------------------------------------

    def request(
        self,
        member: EtcdMember,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """One HTTP request to a member (client certificate if TLS): status and body.

        http.client, not urllib: no proxy from the environment gets in the way.
        """
        url = urlsplit(member.client_url)
        host, port = url.hostname or "", url.port
        conn: http.client.HTTPConnection
        if self.tls_files is None:
            conn = http.client.HTTPConnection(host, port, timeout=1.0)
        else:
            ctx = ssl.create_default_context(cafile=str(self.tls_files.ca))
            ctx.load_cert_chain(str(self.tls_files.client_cert), str(self.tls_files.client_key))
            conn = http.client.HTTPSConnection(host, port, timeout=1.0, context=ctx)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def is_healthy(self, member: EtcdMember) -> bool:
        if self.netns is not None:
            health = [ETCDCTL, f"--endpoints={member.client_url}", "endpoint", "health"]
            done = subprocess.run(self._in_netns(health), capture_output=True, timeout=30,
                                  check=False)  # fmt: skip
            return done.returncode == 0
        try:
            _, body = self.request(member, "GET", "/health")
            return bool(json.loads(body).get("health") == "true")
        except (OSError, http.client.HTTPException, ValueError, AttributeError):
            return False

    def wait_healthy(self, members: list[EtcdMember] | None = None, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        for member in members or self.members:
            while not self.is_healthy(member):
                if member.proc is not None and member.proc.poll() is not None:
                    raise RuntimeError(f"etcd {member.name} exited: {self.log_tail(member)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd {member.name} not healthy: {self.log_tail(member)}")
                time.sleep(0.02)

    def log_tail(self, member: EtcdMember) -> str:
        return member.log_path.read_text(errors="replace")[-2000:]

    # -- faults -------------------------------------------------------------

    def stop(self, index: int, timeout_s: float = 10) -> None:
        """SIGTERM one member and wait for it to exit."""
        member = self.members[index]
        if member.proc is not None and member.proc.poll() is None:
            member.proc.send_signal(signal.SIGTERM)
            try:
                member.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                member.proc.kill()
                member.proc.wait(5)
        member.proc = None

    def start(self, index: int) -> None:
        """Start a stopped member again on its data dir; wait until it serves."""
        self._spawn(self.members[index])
        self.wait_healthy([self.members[index]])

    def restart(self, index: int) -> None:
        self.stop(index)
        self.start(index)

    def wipe(self) -> None:
        """Every member stopped, its data deleted, started empty: revisions
        begin again at 1 and lease ids may be granted again."""
        for i in range(self.size):
            self.stop(i)
        for member in self.members:
            shutil.rmtree(member.data_dir, ignore_errors=True)
        for member in self.members:
            self._spawn(member)
        self.wait_healthy()

    def snapshot_save(self, path: Path) -> None:
        """``etcdctl snapshot save`` from the first member."""
        cmd, env = self._etcdctl_base([self.members[0].client_url])
        subprocess.run(
            self._in_netns([*cmd, "snapshot", "save", str(path)]),
            check=True, capture_output=True, timeout=30, env={**env, "ETCDCTL_API": "3"},
        )  # fmt: skip

    def restore(self, path: Path) -> None:
        """Every member stopped and restored from ``path`` (``etcdctl snapshot
        restore``, as etcd 3.4 documents it), then started: the snapshot's keys,
        revision and leases (etcd grants each its whole TTL again)."""
        for i in range(self.size):
            self.stop(i)
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            shutil.rmtree(member.data_dir, ignore_errors=True)
            subprocess.run(
                [ETCDCTL, "snapshot", "restore", str(path), f"--name={member.name}",
                 f"--data-dir={member.data_dir}", f"--initial-cluster={initial}",
                 "--initial-cluster-token=dbvip-test",
                 f"--initial-advertise-peer-urls={member.peer_url}"],
                check=True, capture_output=True, timeout=30, env={"ETCDCTL_API": "3"},
            )  # fmt: skip
            if os.geteuid() == 0:
                for owned in [member.data_dir, *member.data_dir.rglob("*")]:
                    os.chown(owned, 65534, 65534)
        for member in self.members:
            self._spawn(member)
        self.wait_healthy()

    @property
    def pids(self) -> list[int]:
        return [m.proc.pid for m in self.members if m.proc is not None]

    def freeze(self, index: int) -> None:
        procs.freeze(self.members[index].pid)

    def thaw(self, index: int) -> None:
        procs.thaw(self.members[index].pid)

    # -- etcdctl ------------------------------------------------------------

    def _etcdctl_base(self, endpoints: list[str]) -> tuple[list[str], dict[str, str]]:
        """etcdctl with this cluster's endpoints, TLS and root login, and an
        environment without the caller's ETCDCTL_* settings."""
        cmd = [ETCDCTL, f"--endpoints={','.join(endpoints)}", "--dial-timeout=3s"]
        if self.tls_files is not None:
            files = self.tls_files
            cmd += [f"--cacert={files.ca}", f"--cert={files.client_cert}",
                    f"--key={files.client_key}"]  # fmt: skip
        if self.auth_user is not None:
            cmd.append(f"--user=root:{ROOT_PASSWORD}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
        return cmd, env

    def etcdctl(self, *args: str, check: bool = True) -> str:
        cmd, env = self._etcdctl_base(self.endpoints)
        done = subprocess.run(
            self._in_netns([*cmd, *args]),
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def enable_auth(self, user: str, password: str, prefix: str = "/dbvip/") -> None:
        """Create ``user`` with read-write on ``prefix`` (and root), then enable auth."""
        self.etcdctl("user", "add", f"root:{ROOT_PASSWORD}")
        self.etcdctl("user", "add", f"{user}:{password}")
        self.etcdctl("role", "add", user)
        self.etcdctl("role", "grant-permission", user, "--prefix=true", "readwrite", prefix)
        self.etcdctl("user", "grant-role", user, user)
        self.etcdctl("auth", "enable")
        self.auth_user = (user, password)

    def lease_ids(self) -> set[int]:
        """Every live lease, from ``etcdctl lease list`` (ids printed in hex)."""
        lines = self.etcdctl("lease", "list").splitlines()
        return {int(line.split()[0], 16) for line in lines[1:] if line.strip()}

    # -- teardown -----------------------------------------------------------

    def close(self) -> None:
        try:
            for member in self.members:
                proc, member.proc = member.proc, None
                if proc is not None and proc.poll() is None:
                    proc.kill()  # works on a frozen (SIGSTOPped) member too
                    proc.wait(10)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
