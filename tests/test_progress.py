"""Progress in a log file is a few plain lines, not carriage-return redraws."""

import io
import sys

from fastvits.progress import PeriodicLog, progress


def test_a_file_gets_periodic_lines(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    bar = progress(range(1000), desc="train")
    assert isinstance(bar, PeriodicLog)
    assert sum(1 for _ in bar) == 1000
    err = capsys.readouterr().err
    assert "\r" not in err and err.splitlines() == [err.splitlines()[-1]]  # 30 s never passed: the final line only
    assert err.startswith("train: 1000/1000 (100%)")


def test_lines_carry_the_postfix_at_the_interval(capsys):
    bar = PeriodicLog(None, total=4, desc="eval", interval=0.0)
    for loss in (0.5, 0.25):
        bar.set_postfix(loss=f"{loss:.2f}", refresh=False)
        bar.update()
    bar.close()
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" ")[1] for line in lines] == ["1/4", "2/4", "2/4"]
    assert lines[0].endswith("loss=0.50") and lines[-1].endswith("loss=0.25")


def test_a_terminal_gets_a_bar(monkeypatch):
    tty = io.StringIO()
    tty.isatty = lambda: True
    monkeypatch.setattr(sys, "stderr", tty)
    bar = progress(range(3), desc="predict")
    assert type(bar).__name__ == "tqdm" and list(bar) == [0, 1, 2]


def test_disabled_shows_nothing(capsys):
    assert list(progress(range(3), desc="x", enabled=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""
