"""``dbvip status --watch``: the status again and again, until interrupted.

On a terminal each frame is drawn over the previous one (cursor home, each
line cleared to its end, the rest of the screen cleared below), so the
table stays in place and changes show as they happen. Anywhere else (a pipe,
a file, a log collector) each frame is appended as a plain block under a
time-stamped header, with no control characters. Ctrl-C (SIGINT) ends it
quietly; the caller turns that into exit status 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

HOME = "\x1b[H"
CLEAR_SCREEN = "\x1b[2J"
CLEAR_TO_LINE_END = "\x1b[K"
CLEAR_BELOW = "\x1b[J"
HIDE_CURSOR = "\x1b[?25l"
SHOW_CURSOR = "\x1b[?25h"
MIN_INTERVAL_S = 0.1  # every frame is a read of the whole cluster from etcd


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def watch(
    frame: Callable[[], str],
    out: TextIO,
    interval_s: float,
    *,
    terminal: bool,
    stamped: bool = True,
    now: Callable[[], str] = utc_now,
    monotonic_s: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Write ``frame()`` every ``interval_s`` until KeyboardInterrupt
    (``stamped``: under a time-stamped header when not on a terminal).

    ``frame`` must not raise for a failed read: it returns the failure as
    text, so one etcd hiccup shows on screen and the watch goes on. Frames
    start on a fixed schedule; a slow read delays only its own frame.
    """
    next_s = monotonic_s()
    try:
        if terminal:
            out.write(HIDE_CURSOR + HOME + CLEAR_SCREEN)
        while True:
            stamp, body = now(), frame()
            if terminal:
                lines = [f"{stamp}  every {interval_s:g} s, Ctrl-C to stop", "", *body.splitlines()]
                out.write(HOME + "".join(f"{line}{CLEAR_TO_LINE_END}\n" for line in lines))
                out.write(CLEAR_BELOW)
            elif stamped:
                out.write(f"--- {stamp}\n{body}\n\n")
            else:  # a frame that carries its own time (JSON lines)
                out.write(f"{body}\n")
            out.flush()
            # Behind schedule (a read took longer than the interval): go on
            # from now rather than firing the missed frames at once.
            now_s = monotonic_s()
            next_s = max(next_s + interval_s, now_s)
            sleep(next_s - now_s)
    except KeyboardInterrupt:
        pass
    finally:
        if terminal:
            out.write(SHOW_CURSOR + "\n")
            out.flush()
