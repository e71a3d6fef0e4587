"""What users see when output is piped: nothing cut at 80 columns."""

from __future__ import annotations

import os
import subprocess
import sys

PRINT = """
from steam_persona.common.console import console, summary_table
summary_table("t", [("path", "/very/long/" + "d" * 150 + "/report.md"), ("review", "word " * 60)])
console.print("line " + "x" * 180, soft_wrap=True)
console.print("[yellow]warning: " + "a long note " * 30 + "[/yellow]")
print(console.width)
"""


def test_piped_output_keeps_long_values_whole():
    """Regression: piped to a file, rich laid tables out for 80 columns and cut paths and reviews with "…"."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    r = subprocess.run([sys.executable, "-c", PRINT], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "200"  # PIPE_WIDTH
    assert "…" not in r.stderr
    assert "/very/long/" + "d" * 150 + "/report.md" in r.stderr  # one table line, not folded or cut
    assert " ".join(r.stderr.split()).count("word") == 60
    assert "line " + "x" * 180 in r.stderr
    env["COLUMNS"] = "100"
    r = subprocess.run([sys.executable, "-c", PRINT], capture_output=True, text=True, env=env, timeout=60)
    assert r.stdout.strip() == "100" and "…" not in r.stderr
    assert "warning: " + "a long note " * 30 in r.stderr  # trial 30 S8: a warning is one line for grep
    assert "".join(line.strip(" │") for line in r.stderr.splitlines()).count("d" * 150) == 1  # folded, whole


def test_no_progress_bar_without_a_terminal(monkeypatch):
    """Trial 26 F12 / trial 27 N6: piped, every stage still printed its bar once at the end (train's stale ETA after
    the run, export's verify bar showing the whole export's time); the plain lines are the progress there."""
    import io

    from steam_persona.common import console as console_mod

    def bar_text(terminal: bool) -> str:
        buf = io.StringIO()
        monkeypatch.setattr(console_mod.console, "_file", buf)
        monkeypatch.setattr(console_mod.console, "_force_terminal", terminal)
        with console_mod.progress() as bar:
            task = bar.add_task("verify q4_k_m", total=5)
            bar.advance(task, 3)
        return buf.getvalue()

    assert bar_text(False) == ""
    assert "verify q4_k_m" in bar_text(True) and "3/5" in bar_text(True)


def test_a_ctrl_c_right_after_a_line_is_written_never_prints_it_again():
    """Trial 28 S8: train's step line came twice when Ctrl-C landed just after it was written (rich clears its
    buffer only after the flush), as a script that sends it on seeing the line does."""
    import io

    import pytest

    from steam_persona.common import console as console_mod

    class Interrupted(io.StringIO):
        pending = True

        def flush(self):
            super().flush()
            if self.pending:  # the line is out; the signal's KeyboardInterrupt comes here
                self.pending = False
                raise KeyboardInterrupt

    out = Interrupted()
    c = console_mod._Console(file=out, width=200)
    with pytest.raises(KeyboardInterrupt):
        c.print("train step 3/6  loss 4.0", markup=False)
    c.print("interrupted after step 3 of 6", markup=False)
    assert out.getvalue() == "train step 3/6  loss 4.0\ninterrupted after step 3 of 6\n"


def test_a_plain_progress_line_of_an_unknown_total_says_so(monkeypatch):
    """Trial 39 (5): a page without total_reviews printed `app 131 reviews 4/0`."""
    import io

    from steam_persona.common import console as console_mod

    buf = io.StringIO()
    monkeypatch.setattr(console_mod.console, "_file", buf)
    monkeypatch.setattr(console_mod.console, "_force_terminal", False)
    console_mod.plain_progress("app 131 reviews", 4, None, {"pages": 1})
    console_mod.plain_progress("app 131 reviews", 4, 9, {"pages": 1})
    assert buf.getvalue().splitlines() == ["app 131 reviews 4/?  pages 1", "app 131 reviews 4/9  pages 1"]
