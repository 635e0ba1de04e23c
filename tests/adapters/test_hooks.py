"""HookRunner with real executables (``#!/bin/sh`` scripts written to tmp_path)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dbvip.board import Board
from dbvip.events import Event, EventKind
from dbvip.hooks import INHERITED, OUTPUT_LIMIT_BYTES, HookRunner
from dbvip.metrics import Metrics
from dbvip.model import Role, Timing
from dbvip.runner import Ports, Runner
from integration.lab.eventually import eventually
from tests.fakes import (
    WRITER,
    FakeAnnouncer,
    FakeClock,
    FakeEtcd,
    FakeKernel,
    FakeLeaseStore,
    FakeProbe,
    FakeVipDriver,
    FakeWaiter,
)
from tests.observed import sample_value

pytestmark = pytest.mark.real

FACTS = {"NODE": "n1", "CLUSTER": "main", "VIP": "198.51.100.10", "INTERFACE": "eth0"}
SIDECAR_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "DBVIP_ETCD_PASSWORD": "etcd-s3cret",
    "DBVIP_PG_PASSWORD": "pg-s3cret",
    "DBVIP_ETCD_PASSWORD_FILE": "/run/secrets/etcd-s3cret",
    "DBVIP_PG_DSN": "host=/run/postgresql password=dsn-s3cret",
    "PGPASSWORD": "libpq-s3cret",
    "AWS_SECRET_ACCESS_KEY": "aws-s3cret",
}
# What a shell may add to the environment it was given.
SHELL_ADDS = {"PWD", "OLDPWD", "SHLVL", "_"}


def event(kind: EventKind = EventKind.ACQUIRE, reason: str = "taking_over") -> Event:
    return Event(
        kind=kind,
        reason=reason,
        detail="VIP absent, adding it",
        lease_id=0x694D7A5B3C2E1F00,
        holder="n1",
        role=Role.PRIMARY,
        timeline=3,
        at="2026-11-24T22:47:27Z",
    )


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def read_pid(path: Path) -> int:
    text = eventually(lambda: path.exists() and path.read_text().strip())
    assert isinstance(text, str)  # truthy, so not the False of "and"
    return int(text)


class Logged(logging.Handler):
    """Records of ``dbvip.hooks``, from whatever thread logged them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.INFO) -> list[str]:
        return [r.getMessage() for r in list(self.records) if r.levelno >= level]

    def find(self, text: str, level: int = logging.INFO) -> list[str]:
        return [m for m in self.messages(level) if text in m]


@pytest.fixture
def logged() -> Iterator[Logged]:
    logger = logging.getLogger("dbvip.hooks")
    handler, level = Logged(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """PIDs of processes a test's hooks started; killed (by PID) if left over."""
    started: list[int] = []
    try:
        yield started
    finally:
        for pid in started:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


MakeRunner = Callable[..., HookRunner]


@pytest.fixture
def make_runner() -> Iterator[MakeRunner]:
    made: list[HookRunner] = []

    def make(hooks: dict[EventKind, Path], timeout_s: float = 10.0) -> HookRunner:
        runner = HookRunner(
            {k: str(p) for k, p in hooks.items()}, timeout_s, FACTS, environ=SIDECAR_ENV
        )
        runner.start()
        made.append(runner)
        return runner

    try:
        yield make
    finally:
        for runner in made:
            runner.stop()


def hook(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_hook_gets_the_facts_as_environment_and_the_event_as_argument(
    tmp_path: Path, make_runner: MakeRunner, logged: Logged
) -> None:
    out = tmp_path / "env.out"
    script = hook(
        tmp_path, "h.sh", f'echo "arg=$1" > {out}.tmp\nenv >> {out}.tmp\nmv {out}.tmp {out}\n'
    )
    runner = make_runner({EventKind.ACQUIRE: script})
    runner.on_event(event())
    eventually(out.exists)
    lines = out.read_text().splitlines()
    assert lines[0] == "arg=acquire"
    env = dict(line.split("=", 1) for line in lines[1:])
    assert {k: v for k, v in env.items() if k.startswith("DBVIP_")} == {
        "DBVIP_HOOK_EVENT": "acquire",
        "DBVIP_HOOK_NODE": "n1",
        "DBVIP_HOOK_CLUSTER": "main",
        "DBVIP_HOOK_VIP": "198.51.100.10",
        "DBVIP_HOOK_INTERFACE": "eth0",
        "DBVIP_HOOK_REASON": "taking_over",
        "DBVIP_HOOK_DETAIL": "VIP absent, adding it",
        "DBVIP_HOOK_LEASE_ID": "694d7a5b3c2e1f00",
        "DBVIP_HOOK_HOLDER": "n1",
        "DBVIP_HOOK_ROLE": "primary",
        "DBVIP_HOOK_TIMELINE": "3",
        "DBVIP_HOOK_AT": "2026-11-24T22:47:27Z",
    }
    assert env["PATH"] == SIDECAR_ENV["PATH"]
    assert env["HOME"] == "/root"
    inherited = {k for k in env if not k.startswith("DBVIP_HOOK_")}
    assert inherited <= set(INHERITED) | SHELL_ADDS, inherited
    assert "s3cret" not in out.read_text()
    assert runner.wait_idle(10)
    assert logged.find("hook=acquire done exit status 0")


def test_output_is_logged_line_by_line_stdout_and_stderr(
    tmp_path: Path, make_runner: MakeRunner, logged: Logged
) -> None:
    script = hook(tmp_path, "h.sh", "echo 'moving 198.51.100.10'\necho 'warning: slow API' >&2\n")
    runner = make_runner({EventKind.RELEASE: script})
    runner.on_event(event(EventKind.RELEASE, "demoted"))
    assert runner.wait_idle(10)
    started = logged.find("hook=release started")
    assert len(started) == 1
    assert "reason=demoted" in started[0]
    lines = [m.split(" | ", 1)[1] for m in logged.find(" | ")]
    assert lines == ["moving 198.51.100.10", "warning: slow API"]
    assert logged.find("hook=release done exit status 0")


def test_output_beyond_the_limit_is_counted_not_logged(
    tmp_path: Path, make_runner: MakeRunner, logged: Logged
) -> None:
    lines = 2 * OUTPUT_LIMIT_BYTES // 10
    script = hook(
        tmp_path, "h.sh", f"i=0\nwhile [ $i -lt {lines} ]; do echo 123456789; i=$((i+1)); done\n"
    )
    runner = make_runner({EventKind.ACQUIRE: script})
    runner.on_event(event())
    assert runner.wait_idle(30)
    kept = OUTPUT_LIMIT_BYTES // 10  # whole lines of 10 bytes with their newline
    assert len(logged.find(" | 123456789")) == kept
    assert logged.find(f"not logged: {(lines - kept) * 10} bytes", logging.WARNING)
    assert logged.find("hook=acquire done exit status 0")


def test_non_zero_exit_is_logged_with_status_and_tail(
    tmp_path: Path, make_runner: MakeRunner, logged: Logged
) -> None:
    script = hook(tmp_path, "h.sh", "echo 'calling the API'\necho 'API said 403' >&2\nexit 3\n")
    runner = make_runner({EventKind.CONFLICT: script})
    runner.on_event(event(EventKind.CONFLICT, "conflict"))
    assert runner.wait_idle(10)
    (failed,) = logged.find("hook=conflict failed", logging.WARNING)
    assert "exit status 3" in failed
    assert "calling the API | API said 403" in failed


def test_missing_hook_is_logged_and_the_next_one_still_runs(
    tmp_path: Path, make_runner: MakeRunner, logged: Logged
) -> None:
    gone = hook(tmp_path, "gone.sh", "exit 0\n")
    ok = hook(tmp_path, "ok.sh", "echo fine\n")
    runner = make_runner({EventKind.ACQUIRE: gone, EventKind.RELEASE: ok})
    gone.unlink()  # removed after the start-up check
    runner.on_event(event())
    runner.on_event(event(EventKind.RELEASE, "demoted"))
    assert runner.wait_idle(10)
    (missing,) = logged.find("hook=acquire not run", logging.WARNING)
    assert str(gone) in missing
    assert "No such file or directory" in missing
    assert logged.find("hook=release done exit status 0")


def test_hung_hook_is_killed_at_the_timeout_with_its_group_only(
    tmp_path: Path, make_runner: MakeRunner, logged: Logged, pids: list[int]
) -> None:
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    pids.append(bystander.pid)
    pid_file = tmp_path / "pid"
    script = hook(tmp_path, "h.sh", f"echo $$ > {pid_file}\necho 'waiting for the API'\nsleep 60\n")
    runner = make_runner({EventKind.ACQUIRE: script}, timeout_s=1.0)
    runner.on_event(event())
    pid = read_pid(pid_file)
    pids.append(pid)
    assert runner.wait_idle(15)
    (hung,) = logged.find("hook=acquire hung past 1 s", logging.WARNING)
    assert "killed its process group" in hung
    assert "waiting for the API" in hung
    assert not alive(pid)
    assert bystander.poll() is None, "a process outside the hook's group was killed"
    bystander.kill()
    bystander.wait(10)


def test_a_child_left_running_by_the_hook_is_killed_with_its_group(
    tmp_path: Path, make_runner: MakeRunner, logged: Logged, pids: list[int]
) -> None:
    child_file = tmp_path / "child"
    # The hook exits at once; its child keeps running and keeps its output open.
    script = hook(tmp_path, "h.sh", f"sleep 60 &\necho $! > {child_file}\nexit 0\n")
    runner = make_runner({EventKind.RELEASE: script}, timeout_s=1.0)
    runner.on_event(event(EventKind.RELEASE, "demoted"))
    child = read_pid(child_file)
    pids.append(child)
    assert runner.wait_idle(15)
    assert logged.find("hook=release exited with 0 but left processes past 1 s", logging.WARNING)
    eventually(lambda: not alive(child))


def test_stop_waits_for_a_queued_release_hook(
    tmp_path: Path, make_runner: MakeRunner, logged: Logged
) -> None:
    done = tmp_path / "done"
    release = hook(tmp_path, "release.sh", f"sleep 0.5\ntouch {done}\n")
    runner = make_runner({EventKind.RELEASE: release}, timeout_s=10.0)
    runner.on_event(event(EventKind.RELEASE, "stopping"))
    runner.stop()
    assert done.exists(), "stop returned before the release hook had its chance"
    assert logged.find("hook=release done exit status 0")


def test_stop_gives_the_hooks_their_timeout_in_all_then_drops_the_rest(
    tmp_path: Path, make_runner: MakeRunner, logged: Logged, pids: list[int]
) -> None:
    pid_file = tmp_path / "pid"
    hung = hook(tmp_path, "hung.sh", f"echo $$ >> {pid_file}\nsleep 60\n")
    never = tmp_path / "never"
    late = hook(tmp_path, "late.sh", f"touch {never}\n")
    timeout_s = 3.0
    runner = make_runner(
        {EventKind.ACQUIRE: hung, EventKind.CONFLICT: hung, EventKind.RELEASE: late},
        timeout_s=timeout_s,
    )
    runner.on_event(event())
    runner.on_event(event(EventKind.CONFLICT, "conflict"))
    runner.on_event(event(EventKind.RELEASE, "stopping"))
    pids.append(read_pid(pid_file))  # the first hung hook runs
    began = time.monotonic()
    runner.stop()
    # Generous: the hooks get timeout_s in all from stop(), not timeout_s each.
    assert time.monotonic() - began < 2 * timeout_s, "stop waited for every hook in turn"
    started = [int(line) for line in pid_file.read_text().split()]
    pids.extend(started)
    assert not any(alive(pid) for pid in started)
    assert logged.find("hook=acquire hung", logging.WARNING)
    (dropped,) = logged.find("hooks not run, shutdown time is up", logging.WARNING)
    assert dropped.endswith("release")
    assert not never.exists()


def test_a_hung_acquire_hook_does_not_delay_the_release_of_the_vip(
    tmp_path: Path, make_runner: MakeRunner, logged: Logged, pids: list[int]
) -> None:
    acquire_pid = tmp_path / "acquire.pid"
    released = tmp_path / "released"
    acquire = hook(tmp_path, "acquire.sh", f"echo $$ > {acquire_pid}\nsleep 60\n")
    release = hook(tmp_path, "release.sh", f'echo "$DBVIP_HOOK_REASON" > {released}\n')
    hooks = make_runner({EventKind.ACQUIRE: acquire, EventKind.RELEASE: release}, timeout_s=3.0)

    clock = FakeClock()
    etcd, kernel = FakeEtcd(clock), FakeKernel(clock)
    probe = FakeProbe(clock, Role.PRIMARY)
    ports = Ports(
        clock,
        probe,
        FakeLeaseStore(etcd, "n1"),
        FakeVipDriver(kernel, "n1"),
        FakeAnnouncer(kernel, "n1"),
    )
    runner = Runner("n1", Timing(), ports, FakeWaiter(clock), on_event=hooks.on_event)
    runner.tick()
    assert kernel.holders() == {"n1"}
    pid = read_pid(acquire_pid)  # the acquire hook runs, and hangs
    pids.append(pid)

    probe.role = Role.REPLICA
    clock.advance(0.2)
    runner.tick()
    assert kernel.holders() == set(), "the VIP must come down while the hook hangs"
    assert etcd.get(WRITER) is None
    assert alive(pid), "the acquire hook was still hanging during the release"
    assert not released.exists()

    # Hooks of one node run in order: the release hook after the acquire hook
    # was killed at its timeout.
    assert eventually(released.exists, timeout_s=15)
    assert released.read_text().strip() == "demoted"
    assert not alive(pid)
    assert logged.find("hook=acquire hung past 3 s", logging.WARNING)


def test_every_way_a_hook_run_ends_is_counted_by_event_and_result(
    tmp_path: Path, pids: list[int]
) -> None:
    clock = FakeClock()
    metrics = Metrics(Board("198.51.100.10/32", Timing(), clock), "main", "n1", "198.51.100.10")

    def count(kind: EventKind, result: str) -> float | None:
        labels = {"event": kind.value, "result": result}
        return sample_value(metrics, "dbvip_hook_runs_total", labels)

    assert count(EventKind.CONFLICT, "failed") == 0  # every series there from the start
    pid_file = tmp_path / "hung.pid"
    hooks = {
        EventKind.ACQUIRE: hook(tmp_path, "ok.sh", "exit 0\n"),
        EventKind.RELEASE: hook(tmp_path, "fail.sh", "exit 3\n"),
        EventKind.CONFLICT: hook(tmp_path, "hang.sh", f"echo $$ > {pid_file}\nexec sleep 60\n"),
    }
    runner = HookRunner(
        {k: str(p) for k, p in hooks.items()},
        0.5,
        FACTS,
        environ=SIDECAR_ENV,
        observe=metrics.hook_done,
    )
    runner.start()
    try:
        runner.on_event(event(EventKind.ACQUIRE))
        runner.on_event(event(EventKind.RELEASE))
        runner.on_event(event(EventKind.CONFLICT))
        pids.append(read_pid(pid_file))
        assert runner.wait_idle(10)
        hooks[EventKind.ACQUIRE].unlink()  # cannot be started any more
        runner.on_event(event(EventKind.ACQUIRE))
        assert runner.wait_idle(10)
    finally:
        runner.stop()
    assert count(EventKind.ACQUIRE, "ok") == 1
    assert count(EventKind.ACQUIRE, "error") == 1
    assert count(EventKind.RELEASE, "failed") == 1
    assert count(EventKind.CONFLICT, "timeout") == 1
    assert count(EventKind.RELEASE, "ok") == 0
    assert count(EventKind.CONFLICT, "dropped") == 0
