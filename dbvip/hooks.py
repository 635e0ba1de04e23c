"""Operators' hooks: an executable per event, run off the loop, bounded in time.

The loop hands events to ``HookRunner.on_event``, which only queues them: a
failed, slow or hung hook never delays a decision, least of all the removal
of the VIP. One worker thread runs the hooks of this node one at a time, in
order. Each runs without a shell, in its own session (so its process group
can be killed as a whole), with ``/`` as working directory, no stdin, a
minimal environment (never the sidecar's secrets) plus the event's facts as
``DBVIP_HOOK_*`` variables, and the event's name as its only argument. Its
output (stdout and stderr together) is logged line by line, up to a limit.
When the hook has not exited and closed its output within ``timeout_s``,
its process group is killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Literal

from dbvip.events import Event, EventKind

log = logging.getLogger("dbvip.hooks")

# The only variables a hook inherits from the sidecar's environment.
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
OUTPUT_LIMIT_BYTES = 64 * 1024  # logged per hook run; the rest is counted
MAX_LINE_BYTES = 4096  # a longer line is logged in pieces
TAIL_LINES = 5  # lines quoted when a hook fails
MAX_QUEUED = 32  # events waiting for the worker; more are dropped, logged
POLL_S = 0.1  # how often a running hook's deadline is looked at
AFTER_KILL_S = 1.0  # to read what killed processes left in the pipe, and reap

# How a hook run ended (the metrics count them): ok; failed: non-zero exit or
# a signal; timeout: killed past the limit; error: could not be started;
# dropped: never run (queue full, or shutdown time up).
HookResult = Literal["ok", "failed", "timeout", "error", "dropped"]
HookObserver = Callable[[EventKind, HookResult], None]


def _ignore(kind: EventKind, result: HookResult) -> None:
    pass


def hook_environment(
    event: Event, static: Mapping[str, str], environ: Mapping[str, str]
) -> dict[str, str]:
    """The hook's whole environment: a few inherited variables, the facts."""
    env = {name: environ[name] for name in INHERITED if name in environ}
    env.setdefault("PATH", os.defpath)
    facts = {
        "EVENT": event.kind.value,
        **static,
        "REASON": event.reason,
        "DETAIL": event.detail,
        "LEASE_ID": "" if event.lease_id is None else f"{event.lease_id:x}",
        "HOLDER": event.holder or "",
        "ROLE": event.role.value,
        "TIMELINE": "" if event.timeline is None else str(event.timeline),
        "AT": event.at,
    }
    env.update({f"DBVIP_HOOK_{name}": value for name, value in facts.items()})
    return env


class _Output:
    """A hook's output as log lines, bounded, with a tail kept for failures."""

    def __init__(self, name: str, pid: int) -> None:
        self._prefix = f"hook={name} pid={pid}"
        self._partial = b""
        self._logged = 0
        self.dropped = 0
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)

    def feed(self, data: bytes) -> None:
        self._partial += data
        while b"\n" in self._partial or len(self._partial) >= MAX_LINE_BYTES:
            cut = self._partial.find(b"\n")
            if cut < 0 or cut >= MAX_LINE_BYTES:
                line, self._partial = self._partial[:MAX_LINE_BYTES], self._partial[MAX_LINE_BYTES:]
            else:
                line, self._partial = self._partial[:cut], self._partial[cut + 1 :]
            self._line(line)

    def close(self) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = b""
        if self.dropped:
            log.warning(
                "%s output beyond %d bytes not logged: %d bytes",
                self._prefix,
                OUTPUT_LIMIT_BYTES,
                self.dropped,
            )

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        self.tail.append(text[:200])
        if self._logged + len(raw) > OUTPUT_LIMIT_BYTES:
            self.dropped += len(raw) + 1
            return
        self._logged += len(raw) + 1
        log.info("%s | %s", self._prefix, text)


class HookRunner:
    """Runs ``hooks[kind]`` for each event handed over, one at a time."""

    def __init__(
        self,
        hooks: Mapping[EventKind, str],
        timeout_s: float,
        facts: Mapping[str, str],
        environ: Mapping[str, str] | None = None,
        observe: HookObserver = _ignore,
    ) -> None:
        """``facts``: what holds for every event (``NODE``, ``CLUSTER`` ...),
        passed as ``DBVIP_HOOK_<NAME>``; ``environ``: where the inherited
        variables come from (the process's environment by default);
        ``observe``: hears how each run ended, on the worker thread."""
        self._hooks = {kind: path for kind, path in hooks.items() if path}
        self._timeout_s = timeout_s
        self._facts = dict(facts)
        self._environ = os.environ if environ is None else environ
        self._observe = observe
        self._queue: deque[Event] = deque()
        self._changed = threading.Condition()
        self._busy = False
        self._shutdown_s: float | None = None  # monotonic limit once stopping
        self._thread = threading.Thread(target=self._loop, name="dbvip-hooks", daemon=True)

    def start(self) -> None:
        if self._hooks:
            self._thread.start()

    def on_event(self, event: Event) -> None:
        """Queue the event's hook; never waits."""
        if event.kind not in self._hooks:
            return
        with self._changed:
            full = len(self._queue) >= MAX_QUEUED
            if not full:
                self._queue.append(event)
                self._changed.notify_all()
        if full:
            log.warning("hook=%s not run: %d hooks already waiting", event.kind.value, MAX_QUEUED)
            self._observe(event.kind, "dropped")

    def wait_idle(self, timeout_s: float) -> bool:
        """Whether every queued hook has finished within ``timeout_s``."""
        limit = time.monotonic() + timeout_s
        with self._changed:
            while self._queue or self._busy:
                left = limit - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def stop(self) -> None:
        """Give the hooks still queued or running ``timeout_s`` from now in
        all, kill what still runs then, drop the rest."""
        with self._changed:
            if self._shutdown_s is None:
                self._shutdown_s = time.monotonic() + self._timeout_s
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(self._timeout_s + 2 * AFTER_KILL_S + 1)

    # -- worker ---------------------------------------------------------------

    def _loop(self) -> None:
        while (event := self._next()) is not None:
            try:
                result = self._run(event)
            except Exception:
                log.exception("hook=%s could not be run", event.kind.value)
                result = "error"
            try:
                self._observe(event.kind, result)
            except Exception:  # a metrics bug must not stop the hooks
                log.exception("hook=%s outcome not counted", event.kind.value)
            finally:
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()

    def _next(self) -> Event | None:
        """The next event to run a hook for; None once stopping and done."""
        with self._changed:
            while not self._queue and self._shutdown_s is None:
                self._changed.wait()
            if not self._queue:
                return None
            if self._shutdown_s is not None and time.monotonic() >= self._shutdown_s:
                dropped = " ".join(e.kind.value for e in self._queue)
                for e in self._queue:
                    self._observe(e.kind, "dropped")
                self._queue.clear()
                self._changed.notify_all()
                log.warning("hooks not run, shutdown time is up: %s", dropped)
                return None
            self._busy = True
            return self._queue.popleft()

    def _limit_s(self, started_s: float) -> float:
        shutdown = self._shutdown_s  # read without the lock: a float, set once
        limit = started_s + self._timeout_s
        return limit if shutdown is None else min(limit, shutdown)

    def _run(self, event: Event) -> HookResult:
        name, path = event.kind.value, self._hooks[event.kind]
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                [path, name],
                env=hook_environment(event, self._facts, self._environ),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd="/",
                start_new_session=True,  # its own process group, to kill as a whole
            )
        except OSError as e:
            log.warning("hook=%s not run path=%s cause=%r", name, path, f"{e.strerror}")
            return "error"
        log.info("hook=%s started path=%s pid=%d reason=%s", name, path, proc.pid, event.reason)
        assert proc.stdout is not None
        output = _Output(name, proc.pid)
        exited: int | None = None  # the hook's own exit, when its group is killed
        with proc.stdout, selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            finished = _follow(proc, sel, output, lambda: self._limit_s(started))
            if not finished:
                exited = proc.poll()
                _kill_group(proc.pid)
                _drain(sel, output, time.monotonic() + AFTER_KILL_S)
        output.close()
        try:
            code = proc.wait(AFTER_KILL_S)
        except subprocess.TimeoutExpired:  # pragma: no cover (SIGKILL not delivered?)
            log.error("hook=%s pid=%d did not die after SIGKILL", name, proc.pid)
            return "timeout"
        took = time.monotonic() - started
        tail = " | ".join(output.tail)
        if not finished:
            how = "hung" if exited is None else f"exited with {exited} but left processes"
            log.warning(
                "hook=%s %s past %g s; killed its process group after %.1f s tail=%r",
                name,
                how,
                self._timeout_s,
                took,
                tail,
            )
            return "timeout"
        if code != 0:
            cause = f"signal {-code}" if code < 0 else f"exit status {code}"
            log.warning("hook=%s failed %s after %.1f s tail=%r", name, cause, took, tail)
            return "failed"
        log.info("hook=%s done exit status 0 after %.1f s", name, took)
        return "ok"


def _follow(
    proc: subprocess.Popen[bytes],
    sel: selectors.BaseSelector,
    output: _Output,
    limit_s: Callable[[], float],
) -> bool:
    """Log the output until the hook exited and closed it (True), or the
    limit passed (False)."""
    eof = False
    while True:
        left = limit_s() - time.monotonic()
        if eof and proc.poll() is not None:
            return True
        if left <= 0:
            return False
        if eof:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(min(left, POLL_S))
            continue
        if sel.select(min(left, POLL_S)):
            eof = not _read(sel, output)


def _read(sel: selectors.BaseSelector, output: _Output) -> bool:
    """Read what is there; False at end of output."""
    (key,) = sel.get_map().values()
    data = os.read(key.fd, 65536)
    if data:
        output.feed(data)
    return bool(data)


def _drain(sel: selectors.BaseSelector, output: _Output, limit_s: float) -> None:
    """What killed processes wrote before dying; a process that escaped the
    group may hold the pipe open, so only until ``limit_s``."""
    while (left := limit_s - time.monotonic()) > 0:
        if sel.select(min(left, POLL_S)) and not _read(sel, output):
            return


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(pgid, signal.SIGKILL)
