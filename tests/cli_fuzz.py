"""A fuzzer for the command line: mutates the shipped specs, run configs, plan files and catalogs, feeds each
mutant to the CLI command that reads it, and classifies the outcome. Cases run one after another in a
driver process (so the imports are paid once), each under its own deadline: a case past it is a hang, and
the driver is replaced. A traceback is any exception the CLI does not turn into its own error message.

`python tests/cli_fuzz.py [N]` runs N cases and prints the tally (the test runs a fixed, seeded set).
"""

from __future__ import annotations

import copy
import json
import os
import random
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
# What a mutated value becomes: the inputs the review found breaking things, and their neighbours.
HOSTILE: list[Any] = [0, -5, -1e-9, 1e9, 1e300, float("inf"), float("-inf"), float("nan"), "", "x" * 300, [], {},
                      None, True, 7, "1e9", " ", [1, [2, [3]]], {"a": {"b": None}}, "300 ms", "-2 GiB", 2**63]

# (category, file the mutant replaces, the command that reads it; {f} is the mutant's path, {d} a scratch dir)
TARGETS: list[tuple[str, str, list[str]]] = [
    ("spec", "tests/data/serve/chat.yaml", ["compile", "{f}"]),
    ("spec", "examples/agents/rag-support.yaml", ["compile", "{f}", "--emit", "granular"]),
    ("spec", "tests/data/serve/chat.yaml",
     ["plan", "{f}", "--workload", "examples/workloads/steady-5rps.yaml", "--sla", "examples/slas/interactive.yaml",
      "--cluster", "examples/clusters/hetero.yaml", "--no-verify"]),
    ("spec", "examples/workloads/steady-5rps.yaml",
     ["plan", "tests/data/serve/chat.yaml", "--workload", "{f}", "--sla", "examples/slas/interactive.yaml",
      "--cluster", "examples/clusters/hetero.yaml", "--no-verify"]),
    ("spec", "examples/slas/interactive.yaml",
     ["plan", "tests/data/serve/chat.yaml", "--workload", "examples/workloads/steady-5rps.yaml", "--sla", "{f}",
      "--cluster", "examples/clusters/hetero.yaml", "--no-verify"]),
    ("spec", "examples/clusters/hetero.yaml",
     ["plan", "tests/data/serve/chat.yaml", "--workload", "examples/workloads/steady-5rps.yaml", "--sla",
      "examples/slas/interactive.yaml", "--cluster", "{f}", "--no-verify"]),
    ("run config", "examples/runtime/rag.yaml",
     ["run", "tests/data/serve/slow.yaml", "--config", "{f}", "--input", "hi", "--concurrency", "1"]),
    ("plan", "examples/plans/voice-agent.plan.json", ["simulate", "{f}", "--duration", "3"]),
    ("plan", "examples/plans/voice-agent.plan.json", ["deploy", "{f}", "--target", "ray", "-o", "{d}"]),
    ("plan", "examples/plans/rag-support.plan.json",
     ["run", "tests/data/serve/slow.yaml", "--plan", "{f}", "--input", "hi", "--concurrency", "1"]),
    ("catalog", "terrazzo/catalog/data/devices.yaml", ["hw", "validate", "{f}"]),
    ("catalog", "terrazzo/catalog/data/models.yaml", ["hw", "validate", "{f}"]),
    ("catalog", "terrazzo/catalog/data/devices.yaml",
     ["cost", "llama-3-8b", "--device", "h100", "--catalog", "{f}", "--json"]),
]


def _paths(data: Any, loc: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [loc]
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, (*loc, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, (*loc, i))
    return out


def _set(data: Any, loc: tuple[Any, ...], value: Any, delete: bool = False) -> Any:
    if not loc:
        return value
    parent = data
    for p in loc[:-1]:
        parent = parent[p]
    if delete:
        del parent[loc[-1]]
    else:
        parent[loc[-1]] = value
    return data


def mutate(text: str, is_json: bool, rng: random.Random) -> str:
    """One mutant: a value swapped for a hostile one, a key dropped, or the text itself damaged."""
    how = rng.random()
    if how < 0.15:  # damage the text: drop a line, cut the file, or splice in junk
        lines = text.splitlines()
        i = rng.randrange(len(lines))
        choice = rng.randrange(3)
        if choice == 0:
            del lines[i]
        elif choice == 1:
            lines = lines[:i]
        else:
            lines.insert(i, rng.choice(["{", "]", "- - -", "\t:", "&a [*a]", "key: [unclosed", '"', "!!python/none"]))
        return "\n".join(lines)
    data = json.loads(text) if is_json else yaml.safe_load(text)
    for _ in range(1 + (rng.random() < 0.3)):  # one change, sometimes two
        paths = _paths(data)[1:] or [()]
        loc = rng.choice(paths)
        if rng.random() < 0.2 and loc:
            data = _set(data, loc, None, delete=True)
        else:
            data = _set(data, loc, copy.deepcopy(rng.choice(HOSTILE)))
    if is_json:
        return json.dumps(data, indent=1)  # NaN and Infinity as Python writes them
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# --- the driver: one process, many cases ---------------------------------------------------------------------
def _drive() -> None:
    """Read a JSON argv per line, run it through the CLI in-process, answer {"outcome", "detail"} per line."""
    import traceback

    from typer.testing import CliRunner

    from terrazzo.cli import app
    from terrazzo.errors import TerrazzoError

    runner = CliRunner()
    for line in sys.stdin:
        argv = json.loads(line)
        res = runner.invoke(app, argv, catch_exceptions=True)
        exc = res.exception
        if exc is None or isinstance(exc, SystemExit | TerrazzoError):
            outcome, detail = "ok", ""
        else:
            outcome = "traceback"
            detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-3000:]
        sys.__stdout__.write(json.dumps({"outcome": outcome, "detail": detail}) + "\n")
        sys.__stdout__.flush()


@dataclass
class Tally:
    cases: int = 0
    ok: int = 0
    tracebacks: list[dict[str, Any]] = field(default_factory=list)
    hangs: list[dict[str, Any]] = field(default_factory=list)
    by_category: dict[str, int] = field(default_factory=dict)


class Driver:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-u", __file__, "--drive"], cwd=ROOT, env=self.env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def run(self, argv: list[str], timeout_s: float) -> dict[str, Any] | None:
        """The case's outcome, or None when it ran past `timeout_s` (the driver is then killed)."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(argv) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            return None
        return json.loads(line)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


def fuzz(n_cases: int, seed: int, scratch: Path, timeout_s: float = 60.0) -> Tally:
    rng = random.Random(seed)
    scratch.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"),
                                                       os.environ.get("PYTHONPATH", "")]),
           "COLUMNS": "200", "TZ_FUZZ": "1"}
    driver, tally = Driver(env), Tally()
    (scratch / "run").mkdir(exist_ok=True)
    try:
        for i in range(n_cases):
            category, source, command = TARGETS[i % len(TARGETS)]
            src = ROOT / source
            mutant = scratch / f"case{i}{src.suffix}"
            text = src.read_text()
            if category == "run config":
                text = f"state_dir: {scratch / 'run'}\nwarmup: false\n" + text.replace("state_dir:", "# state_dir:")
            mutant.write_text(mutate(text, src.suffix == ".json", rng))
            argv = [a.format(f=mutant, d=scratch / f"out{i}") for a in command]
            t0 = time.monotonic()
            out = driver.run(argv, timeout_s)
            tally.cases += 1
            tally.by_category[category] = tally.by_category.get(category, 0) + 1
            case = {"case": i, "argv": argv, "file": mutant.read_text()[:4000], "s": round(time.monotonic() - t0, 2)}
            if out is None:
                tally.hangs.append(case)
            elif out["outcome"] == "traceback":
                tally.tracebacks.append({**case, "traceback": out["detail"]})
            else:
                tally.ok += 1
    finally:
        driver.close()
    return tally


if __name__ == "__main__":
    if sys.argv[1:] == ["--drive"]:
        _drive()
    else:
        import tempfile

        n = int(sys.argv[1]) if len(sys.argv) > 1 else 130
        with tempfile.TemporaryDirectory() as tmp:
            t = fuzz(n, int(os.environ.get("TZ_FUZZ_SEED", "0")), Path(tmp))
        print(json.dumps({"cases": t.cases, "ok": t.ok, "tracebacks": len(t.tracebacks), "hangs": len(t.hangs),
                          "by_category": t.by_category}, indent=1))
        for bad in t.tracebacks + t.hangs:
            print("\n--- case", bad["case"], " ".join(bad["argv"]), "\n", bad.get("traceback", "HANG")[-1500:])
