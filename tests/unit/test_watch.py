"""The watch loop on a fake clock: its schedule, what it writes on a terminal
and elsewhere, and how Ctrl-C ends it (the real thing: tests/adapters/
test_status_watch.py)."""

from __future__ import annotations

import io

from dbvip.watch import CLEAR_BELOW, CLEAR_TO_LINE_END, HIDE_CURSOR, HOME, SHOW_CURSOR, watch


class Timeline:
    """A fake clock whose sleep advances it; Ctrl-C after ``frames`` frames.
    Each frame's read takes ``read_s[i]`` seconds."""

    def __init__(self, frames: int, read_s: list[float] | None = None) -> None:
        self.now_s = 100.0
        self.frames = frames
        self.read_s = read_s or [0.0] * frames
        self.started_s: list[float] = []
        self.slept_s: list[float] = []

    def frame(self) -> str:
        self.started_s.append(self.now_s)
        self.now_s += self.read_s[len(self.started_s) - 1]
        return f"writer: n{len(self.started_s)}\nrow a\nrow b"

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.slept_s.append(seconds)
        if len(self.started_s) == self.frames:
            raise KeyboardInterrupt  # the user pressed Ctrl-C while it waited
        self.now_s += seconds


def run(t: Timeline, terminal: bool, stamped: bool = True) -> str:
    out = io.StringIO()
    watch(
        t.frame, out, 2.0, terminal=terminal, stamped=stamped,
        now=lambda: "2026-01-01T00:00:00Z", monotonic_s=lambda: t.now_s, sleep=t.sleep,
    )  # fmt: skip
    return out.getvalue()


def test_frames_start_on_a_fixed_schedule_whatever_a_read_takes() -> None:
    t = Timeline(4, read_s=[0.5, 0.1, 0.0, 0.3])
    run(t, terminal=False)
    assert t.started_s == [100.0, 102.0, 104.0, 106.0]


def test_a_read_slower_than_the_interval_delays_only_its_own_frame() -> None:
    t = Timeline(4, read_s=[0.2, 5.0, 0.2, 0.2])
    run(t, terminal=False)
    # No burst of missed frames after the slow one: the next starts at once,
    # then the schedule goes on from there.
    assert t.started_s == [100.0, 102.0, 107.0, 109.0]


def test_on_a_terminal_each_frame_is_drawn_over_the_last_and_ctrl_c_restores_the_cursor() -> None:
    text = run(Timeline(3), terminal=True)
    assert text.startswith(HIDE_CURSOR + HOME)
    frames = text.split(HOME)[2:]  # after the initial clear
    assert len(frames) == 3
    for i, frame in enumerate(frames, 1):
        lines = frame.split("\n")
        assert lines[0] == f"2026-01-01T00:00:00Z  every 2 s, Ctrl-C to stop{CLEAR_TO_LINE_END}"
        assert lines[2] == f"writer: n{i}{CLEAR_TO_LINE_END}"
        assert len(lines[:5]) == 5  # header, blank, the three lines of the frame
        assert all(line.endswith(CLEAR_TO_LINE_END) for line in lines[:5])
        assert lines[5].startswith(CLEAR_BELOW)  # what an older, longer frame left is wiped
    assert frames[-1].endswith(CLEAR_BELOW + SHOW_CURSOR + "\n")


def test_elsewhere_frames_are_appended_as_stamped_plain_blocks() -> None:
    text = run(Timeline(2), terminal=False)
    assert text == (
        "--- 2026-01-01T00:00:00Z\nwriter: n1\nrow a\nrow b\n\n"
        "--- 2026-01-01T00:00:00Z\nwriter: n2\nrow a\nrow b\n\n"
    )


def test_unstamped_frames_are_one_line_each() -> None:
    t = Timeline(0)  # its frames are not counted: Ctrl-C in the first wait
    out = io.StringIO()
    watch(
        lambda: '{"at": "x"}', out, 1.0, terminal=False, stamped=False,
        monotonic_s=lambda: t.now_s, sleep=t.sleep,
    )  # fmt: skip
    assert out.getvalue() == '{"at": "x"}\n'
