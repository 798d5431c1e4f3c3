"""A run says what it is doing: a live bar in a terminal, one line per epoch in a log."""
from __future__ import annotations

import io

from tlsweep.progress import Progress

METRICS = {"train_loss": 0.5123, "val_loss": 0.4, "val_acc": 0.875, "epoch_seconds": 1.25}


def test_a_log_gets_one_line_per_epoch():
    out = io.StringIO()
    p = Progress("probe lr=0.001 seed=0", 2, stream=out, live=False)
    p.start()
    p.ready(3.2, "feature cache on")
    p.epoch(1, METRICS)
    p.epoch(2, METRICS)
    p.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()  # no bar redraws in a log file
    assert lines[0] == "[tlsweep] probe lr=0.001 seed=0: preparing data, model and cached features"
    assert "ready after 3.2 s" in lines[1]
    assert lines[2:] == [
        "[tlsweep] probe lr=0.001 seed=0: epoch 1/2 train_loss=0.5123 val_loss=0.4000 val_acc=0.8750 (1.2 s)",
        "[tlsweep] probe lr=0.001 seed=0: epoch 2/2 train_loss=0.5123 val_loss=0.4000 val_acc=0.8750 (1.2 s)"]


def test_a_terminal_gets_a_bar_that_stays():
    out = io.StringIO()
    p = Progress("finetune seed=1", 3, stream=out, live=True)
    p.ready(1.0, "feature cache off")
    for e in (1, 2, 3):
        p.epoch(e, METRICS)
    p.close()
    text = out.getvalue()
    final = text.split("\r")[-1]
    assert "finetune seed=1" in final and "3/3" in final and "val_acc=0.875" in final
    assert text.endswith("\n")  # leave=True: the finished bar stays on screen


def test_a_long_pass_says_its_count_and_what_is_left_and_a_short_one_says_nothing():
    import io

    from tlsweep.progress import PassProgress

    now = [0.0]
    out = io.StringIO()
    long = PassProgress("feature pass", 1000, period=15, stream=out, clock=lambda: now[0])
    for _ in range(10):
        now[0] += 10
        long.step(100)
    long.done()
    lines = out.getvalue().splitlines()
    # a line per 15 s at most: after 20 s (200 done, 80 s left), 40 s, 60 s, 80 s, 100 s; then the end
    assert lines[0] == "[tlsweep] feature pass: 200/1,000 after 20 s, about 80 s left"
    assert len(lines) == 6 and lines[-1] == "[tlsweep] feature pass: done in 100 s"
    quiet = io.StringIO()
    short = PassProgress("decoding", 10, period=15, stream=quiet, clock=lambda: 1.0)
    short.step(10)
    short.done()
    assert quiet.getvalue() == ""
