"""The command line never answers a bad file with a traceback or a hang: a seeded fuzz of the shipped specs,
run configs, plan files and catalogs (tests/cli_fuzz.py), each mutant through the command that reads it,
each case under its own deadline. Required: 0 tracebacks, 0 hangs."""

from __future__ import annotations

from pathlib import Path

from cli_fuzz import TARGETS, fuzz


def test_cli_fuzz_gives_no_traceback_and_no_hang(tmp_path: Path) -> None:
    tally = fuzz(n_cases=10 * len(TARGETS), seed=15, scratch=tmp_path, timeout_s=60.0)
    assert tally.cases == 10 * len(TARGETS) and set(tally.by_category) == {"spec", "run config", "plan", "catalog"}
    report = "\n\n".join(f"case {c['case']}: {' '.join(c['argv'])}\n{c.get('traceback', 'HANG')}\n--- file:\n"
                         f"{c['file'][:1500]}" for c in tally.tracebacks + tally.hangs)
    assert not tally.tracebacks and not tally.hangs, report
