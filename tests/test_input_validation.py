"""Bad input at every file boundary fails as `file:line: field: what. Fix: how` (exit code 2), never as a
traceback: the cases the review found (finding 9), the catalog's physical ranges (finding 10), and the
limits that keep the planner from working for minutes on an absurd rate."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from terrazzo.cli import app
from terrazzo.errors import TerrazzoError

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples"
CHAT = ROOT / "tests/data/serve/chat.yaml"


def _fails_cleanly(argv: list[str], where: str) -> str:
    """The command fails with the CLI's own error (a TerrazzoError or a usage error), naming `where`."""
    res = CliRunner().invoke(app, [str(a) for a in argv])
    assert res.exception is None or isinstance(res.exception, SystemExit | TerrazzoError), res.exception
    assert res.exit_code != 0
    text = str(res.exception or "") + res.output
    assert re.search(where, text), text
    return text


def test_run_config_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("state_dir: x\nmodels: [unclosed\n")
    _fails_cleanly(["run", ROOT / "tests/data/serve/slow.yaml", "--config", bad, "--input", "hi"], r"bad\.yaml:3")
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    _fails_cleanly(["run", ROOT / "tests/data/serve/slow.yaml", "--config", listed, "--input", "hi"],
                   r"list\.yaml:1: expected a mapping")
    typo = tmp_path / "typo.yaml"
    typo.write_text("state_dir: x\n\nqueue_depth: -3\n")
    _fails_cleanly(["run", ROOT / "tests/data/serve/slow.yaml", "--config", typo, "--input", "hi"],
                   r"typo\.yaml:3: queue_depth")


def test_infinite_or_huge_token_counts_fail_at_their_line(tmp_path: Path) -> None:
    for value, says in ((".inf", "finite number"), ("1e300", "over the limit"),
                        ("{dist: lognormal, mean: .nan, cv: 0.3}", "finite number")):
        spec = tmp_path / "inf.yaml"
        spec.write_text(CHAT.read_text().replace("input_tokens: 2048", f"input_tokens: {value}"))
        _fails_cleanly(["compile", spec], rf"inf\.yaml:11: nodes\.0\.input_tokens.*{says}")


def _device(tmp_path: Path, field: str, value: str) -> Path:
    """The a40 entry of the shipped catalog, renamed, with one field's value replaced."""
    text = (ROOT / "terrazzo/catalog/data/devices.yaml").read_text()
    start = text.index("  a40:\n")
    end = text.index("\n  a100", start)
    block = text[start:end].replace("  a40:", "  my-a40:").replace("name: a40", "name: my-a40")
    block = re.sub(r"aliases: \[[^\]]*\]", "aliases: []", block)
    block = re.sub(rf"({field}: \{{value: )[-0-9.e]+", rf"\g<1>{value}", block)
    path = tmp_path / f"dev-{field}-{value}.yaml"
    path.write_text("devices:\n" + block + "\n")
    return path


@pytest.mark.parametrize(("field", "value", "says"), [
    ("memory_bw_gbyte_s", "0", "not physical"), ("memory_bw_gbyte_s", "-696", "not physical"),
    ("memory_bw_gbyte_s", ".nan", "finite number"), ("memory_bw_gbyte_s", ".inf", "finite number"),
    ("price_usd", "-5000", "not physical"), ("tdp_w", "0", "not physical"), ("nic_gbit_s", "-1", "not physical"),
])
def test_catalog_numbers_must_be_physical(tmp_path: Path, field: str, value: str, says: str) -> None:
    path = _device(tmp_path, field, value)
    _fails_cleanly(["hw", "validate", path], rf"{path.name}:\d+: devices\.my-a40\.(scale_out\.)?{field}.*{says}")
    _fails_cleanly(["cost", "llama-3-8b", "--device", "my-a40", "--catalog", path], says)  # was a traceback at 0


def test_a_valid_device_still_validates(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["hw", "validate", str(_device(tmp_path, "tdp_w", "300"))])
    assert res.exit_code == 0, res.output


def _plan(tmp_path: Path, change: object, name: str) -> Path:
    doc = json.loads((EX / "plans/voice-agent.plan.json").read_text())
    if callable(change):
        change(doc)
    path = tmp_path / name
    path.write_text(json.dumps(doc, indent=1))
    return path


def test_plan_file_fields_are_checked_with_their_line(tmp_path: Path) -> None:
    negative = _plan(tmp_path, lambda d: d["ops"][0].update(replicas=-5), "neg.json")
    _fails_cleanly(["simulate", negative, "--duration", "3"], r"neg\.json:\d+: ops\[0\]\.replicas: -5 is out of range")
    _fails_cleanly(["deploy", negative, "--target", "ray", "-o", tmp_path / "d"], r"neg\.json:\d+: ops\[0\]\.replicas")
    number = _plan(tmp_path, lambda d: d["ops"].__setitem__(0, 7), "int.json")
    _fails_cleanly(["deploy", number, "--target", "ray", "-o", tmp_path / "d"], r"int\.json:\d+: ops\[0\]: expected an")
    _fails_cleanly(["simulate", number], r"int\.json:\d+: ops\[0\]")
    line = json.loads(negative.read_text())  # the reported line is the field's own line
    assert line["ops"][0]["replicas"] == -5
    reported = int(re.search(r"neg\.json:(\d+)", _fails_cleanly(["simulate", negative], "neg")).group(1))  # type: ignore[union-attr]
    assert '"replicas": -5' in negative.read_text().splitlines()[reported - 1]


def test_planner_refuses_an_absurd_rate_at_once(tmp_path: Path) -> None:
    workload = tmp_path / "w.yaml"
    workload.write_text("name: huge\narrival: {process: poisson, rate_per_s: 1e9}\n")
    t0 = time.monotonic()
    _fails_cleanly(["plan", CHAT, "--workload", workload, "--sla", EX / "slas/interactive.yaml",
                    "--cluster", EX / "clusters/hetero.yaml"], r"w\.yaml:2: arrival\.rate_per_s.*100000")
    assert time.monotonic() - t0 < 60  # it used to plan for minutes; a generous bound, not a timing claim
    _fails_cleanly(["simulate", EX / "plans/voice-agent.plan.json", "--rate", "1e9"], "100000")
