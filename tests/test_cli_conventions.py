"""CLI conventions every command keeps: help, --json, full tables on a pipe, --version, completion, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer.main

from terrazzo.cli import app
from terrazzo.cli_output import emit_json, plain

ROOT = Path(__file__).resolve().parent.parent
# Commands whose output is not data a script parses: text formats of their own, files, or a server.
NO_JSON = {"compile": "prints MLIR text or writes artifacts", "serve": "a server", "demo": "a tour",
           "profile": "writes the profile YAML", "hw validate": "prints ok or the error",
           "models make-tiny": "writes a checkpoint"}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "terrazzo.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **(env or {})})


def _commands(group: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, cmd in group.commands.items():
        full = f"{prefix}{name}"
        if hasattr(cmd, "commands"):  # a group (typer's own click types)
            out.update(_commands(cmd, f"{full} "))
        else:
            out[full] = cmd
    return out


COMMANDS = _commands(typer.main.get_command(app))


def test_every_command_and_argument_has_help() -> None:
    assert {"hw list", "models show", "import hf", "import langgraph", "plan", "run"} <= set(COMMANDS)
    for name, cmd in COMMANDS.items():
        assert (cmd.help or "").strip(), f"`terrazzo {name}` has no help"
        for param in cmd.params:
            if param.name in ("help",):
                continue
            assert (getattr(param, "help", None) or "").strip(), f"`terrazzo {name}`: {param.name} has no help"


def test_every_data_command_has_json() -> None:
    for name, cmd in COMMANDS.items():
        if name in NO_JSON:
            continue
        assert any("--json" in getattr(p, "opts", []) for p in cmd.params), f"`terrazzo {name}` lacks --json"


def test_piped_tables_are_never_cut() -> None:
    out = _cli("hw", "list")  # stdout is a pipe, no COLUMNS: rich would default to 80 columns
    assert out.returncode == 0, out.stderr
    assert "…" not in out.stdout
    assert "a100-80gb-sxm" in out.stdout and "15,000" in out.stdout and "epyc-9654" in out.stdout
    models = _cli("models", "list")
    assert "…" not in models.stdout and "deepseek-r1-distill-llama-70b" in models.stdout


def test_json_is_strict_and_parses() -> None:
    for args in (("hw", "list", "--json"), ("hw", "show", "h100", "--json"), ("models", "list", "--json"),
                 ("models", "show", "qwen3-30b-a3b", "--json"), ("worked-example", "--json")):
        out = _cli(*args)
        assert out.returncode == 0, (args, out.stderr)
        json.loads(out.stdout, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))  # no NaN/Infinity
    assert plain({"a": float("inf"), "b": [float("nan"), 1.5], "c": Path("x")}) == {"a": None, "b": [None, 1.5],
                                                                                  "c": "x"}


def test_emit_json_writes_only_json(capsys) -> None:
    emit_json({"x": float("nan")})
    assert json.loads(capsys.readouterr().out) == {"x": None}


def test_version_and_completion() -> None:
    from terrazzo import __version__

    out = _cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"terrazzo {__version__}"
    completion = _cli("--show-completion", "bash")
    assert completion.returncode == 0 and "_terrazzo_completion" in completion.stdout


def test_cost_explains_an_unattainable_tbt_limit() -> None:
    for args in (("llama-3-70b", "--device", "l40s", "--dtype", "fp8", "--tp", "4"),
                 ("llama-3-8b", "--device", "a40", "--dtype", "bf16", "--isl", "1024", "--osl", "128")):
        out = _cli("cost", *args)
        assert out.returncode == 0, out.stderr
        assert "batch must be" not in out.stdout + out.stderr
        assert "TBT limit 20 ms is unattainable: batch 1 already takes" in " ".join(out.stdout.split())
        doc = json.loads(_cli("cost", *args, "--json").stdout)
        assert doc["max_sla_batch"] == 0 and doc["usd_per_m_output_tokens"] is None and "raise --tbt" in doc["tbt_note"]


def test_exit_codes(tmp_path: Path) -> None:
    sla = tmp_path / "tight.yaml"
    sla.write_text("llm_default: {tbt_s: 1 ms}\n")
    infeasible = _cli("plan", "examples/agents/voice-agent.yaml", "--workload", "examples/workloads/steady-5rps.yaml",
                      "--sla", str(sla), "--cluster", "examples/clusters/hetero.yaml")
    assert infeasible.returncode == 1 and "TBT" in infeasible.stderr and "Traceback" not in infeasible.stderr
    usage = _cli("plan", "examples/agents/voice-agent.yaml")  # missing options
    assert usage.returncode == 2
    bad = _cli("hw", "show", "no-such-device")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_profile_device_joins_the_cluster(tmp_path: Path) -> None:
    """A device a profile defines is added to an unconstrained cluster, and an inventory says how to add it."""
    from terrazzo.catalog.catalog_loader import load_catalog
    from terrazzo.cost.calibration import Calibration
    from terrazzo.spec.cluster import Cluster
    from terrazzo.spec.profiled_devices import with_profiled_devices

    cat = load_catalog()
    cat.profiles.append(Calibration(file="me.yaml", device="local-cpu", machine="x", defines_device=True,
                                    llm_model=None, llm_dtype=None, embed_model=None, embed_dtype=None, grids={}))
    open_cluster, notes = with_profiled_devices(Cluster(devices=["h100", "epyc-9654"]), cat)
    assert open_cluster.devices == ["h100", "epyc-9654", "local-cpu"] and "added device 'local-cpu'" in notes[0]
    fixed, notes = with_profiled_devices(Cluster(mode="inventory", inventory={"h100": 8}), cat)
    assert "local-cpu" not in fixed.device_types and "add `local-cpu: 1` under `inventory:`" in notes[0]


def test_implausible_profile_fits_are_flagged() -> None:
    from terrazzo.profile.plausibility import fit_warnings
    from terrazzo.profile.profile_file import Fit, LinkFit, OpFit

    fit = Fit(ops={"embed": OpFit(compute=1.36, memory=0.5, static_latency_s=0.001, fitted=["compute"], points=4,
                                  mape_pct=3.0),
                   "decode": OpFit(compute=0.4, memory=2.0, static_latency_s=0.001, fitted=["compute"], points=4,
                                   mape_pct=4.0)},
              links={"pipe": LinkFit(alpha_s=1e-5, bw_gbyte_s=1.0, points=3, mape_pct=37.0)})
    warnings = fit_warnings(fit, {"embed": 12.0})
    assert any(w.startswith("embed: η compute 1.36 is above 1") for w in warnings)
    assert not any(w.startswith("decode: η memory") for w in warnings)  # memory not fitted: the default stands
    assert any(w.startswith("transfer pipe: fit error 37.0 %") for w in warnings)
    assert len(warnings) == 2
