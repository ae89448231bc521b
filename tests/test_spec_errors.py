"""Every bad spec gives one SpecError naming file, line, field and a fix; never another exception."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.errors import SpecError
from terrazzo.spec.spec_loader import agent_from_text, load_agent, load_cluster, load_sla, load_workload

EMPTY = Catalog()


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def check(err: SpecError, path: Path | str, line: int | None, field: str | None, *needles: str) -> str:
    """The error points at `path`:`line`, names `field`, says each needle and offers a fix."""
    text = str(err)
    assert err.file == str(path), text
    assert err.line == line, text
    assert err.field == field, text
    where = ":".join(str(p) for p in (path, line) if p is not None)
    assert text.startswith(f"{where}: {field + ': ' if field else ''}"), text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    assert re.search(r"\. Fix: \S", text), f"no 'Fix:' part in {text!r}"
    assert err.fix, text
    return text


LLM_AGENT = """
    name: typo
    description: an LLM node with a misspelt field
    nodes:
      - id: think
        kind: llm
        model: llama-3-70b
        input_tokens: 512
        ouput_tokens: 256
"""


@dataclass(frozen=True)
class Bad:
    """One bad spec file and the error it must give: at `line`, naming `field`, saying every needle."""

    kind: str  # which loader reads it: agent, workload, sla or cluster (and the file's name)
    text: str
    line: int | None
    field: str | None
    needles: tuple[str, ...]
    shipped_catalog: bool = False  # agents: check names against the shipped catalog, not an empty one
    agent: str | None = None  # workload and SLA files: checked against this agent


SMALL_AGENT = "name: a\nnodes:\n  - {id: c, kind: compute, cpu_s: 1}\n"
OK_LLM_AGENT = LLM_AGENT.replace("ouput", "output")

BAD: dict[str, Bad] = {
    # The misspelt key is the user's mistake; it (line 8), not the missing 'output_tokens' it leaves
    # behind (reported at the node's first line), is what the message must point at.
    "unknown_key_typo": Bad(
        "agent", LLM_AGENT, 8, "nodes.0.ouput_tokens", ("unknown field 'ouput_tokens'", "spelling")),
    "unknown_key_typo_of_optional_field": Bad(
        "agent", LLM_AGENT.replace("ouput_tokens: 256", "output_tokens: 256\n        dtyp: fp8"), 9, "nodes.0.dtyp",
        ("unknown field 'dtyp'", "spelling")),
    # the typo also leaves output_tokens missing; the error names one problem, at a line in the node
    "missing_required_field_same_file": Bad(
        "agent", LLM_AGENT.replace("ouput_tokens: 256", "dtype: bf16"), 4, "nodes.0.output_tokens",
        ("Field required", "add this field")),
    "unknown_key_in_nested_inline_subagent": Bad("agent", """
        name: outer
        nodes:
          - id: sub
            kind: subagent
            graph:
              nodes:
                - {id: ok, kind: compute, cpu_s: 1}
                - id: bad
                  kind: compute
                  cpu_s: 1
                  cpu_sec: 2
        """, 11, "nodes.0.graph.nodes.1.cpu_sec", ("unknown field 'cpu_sec'",)),
    "unknown_top_level_key": Bad(
        "agent", "name: a\nnodse: []\nnodes:\n  - {id: c, kind: compute, cpu_s: 1}\n", 2, "nodse",
        ("unknown field 'nodse'",)),
    "wrong_unit_in_agent": Bad("agent", """
        name: a
        nodes:
          - id: fetch
            kind: tool
            protocol: http
            endpoint: https://x.example
            latency_s: 2 MB
        """, 7, "nodes.0.latency_s", ("'MB' is a unit of bytes", "takes time")),
    "wrong_unit_in_sla": Bad("sla", """
        mode: interactive
        end_to_end:
          percentile: 99
          latency_s: 2 MB
        """, 4, "end_to_end.latency_s", ("'MB' is a unit of bytes",)),
    "wrong_unit_in_dist_parameter": Bad("agent", """
        name: a
        nodes:
          - id: m
            kind: memory_load
            data_bytes: {dist: uniform, low: 1 KiB, high: 3 s}
        """, 5, "nodes.0.data_bytes", ("'s' is a unit of time", "takes bytes")),
    "negative_rate_in_workload": Bad("workload", """
        name: w
        arrival:
          process: poisson
          rate_per_s: -1
        """, 4, "arrival.rate_per_s", ("greater than or equal to 0", "range")),
    "negative_rate_with_unit_in_workload": Bad(
        "workload", "arrival:\n  rate_per_s: -30 rpm\n", 2, "arrival.rate_per_s", ("greater than or equal to 0",)),
    "workload_without_rate": Bad(
        "workload", "arrival:\n  process: gamma\n  cv: 3\n", 1, "arrival", ("needs 'rate_per_s'",)),
    "workload_tokens_for_unknown_node": Bad("workload", """
        arrival: {rate_per_s: 3}
        tokens:
          thinker:
            input_tokens: 100
        """, 3, "tokens.thinker", ("'thinker' is not an LLM node of agent 'a'", "(none)"), agent=SMALL_AGENT),
    "sla_limits_for_unknown_node": Bad(
        "sla", "llm:\n  c:\n    ttft_s: 1\n", 2, "llm.c", ("'c' is not an LLM node",), agent=SMALL_AGENT),
    "cycle_without_loop_node": Bad("agent", """
        name: spin
        nodes:
          - {id: start, kind: compute, cpu_s: 1}
          - {id: a, kind: compute, cpu_s: 1}
          - {id: b, kind: compute, cpu_s: 1}
        edges:
          - {from: start, to: a}
          - {from: a, to: b}
          - {from: b, to: a}
        """, 8, "edges.1", ("cycle through a, b has no bound", "'loop' node")),
    "unknown_model_suggests_close_name": Bad(
        "agent", OK_LLM_AGENT.replace("llama-3-70b", "llama-3-70"), 6, "nodes.0.model",
        ("unknown model 'llama-3-70'", "did you mean", "'llama-3-70b'"), shipped_catalog=True),
    "unknown_embed_model": Bad("agent", """
        name: a
        nodes:
          - {id: m, kind: memory_lookup, index_vectors: 100, dimension: 8,
             embed_model: all-minilm-l6}
        """, 4, "nodes.0.embed_model", ("unknown model 'all-minilm-l6'", "'all-minilm-l6-v2'"),
        shipped_catalog=True),
    "llm_node_with_non_llm_model": Bad(
        "agent", OK_LLM_AGENT.replace("llama-3-70b", "whisper-large-v3"), 6, "nodes.0.model",
        ("'whisper-large-v3' is not an LLM",), shipped_catalog=True),
    **{f"unknown_device_in_cluster_suggests[{typo}]": Bad("cluster", f"""
        name: c
        mode: unconstrained
        devices:
          - b200
          - {typo}
        """, 5, "devices.1", (f"unknown device '{typo}'", "did you mean", f"'{want}'"))
       for typo, want in (("h10", "h100"), ("h100-sx", "h100-sxm"))},
    "unknown_device_in_inventory": Bad(
        "cluster", "mode: inventory\ninventory:\n  b200: 8\n  gaudi: 4\n", 4, "inventory.gaudi",
        ("unknown device 'gaudi'", "'gaudi3'")),
    "cluster_inventory_negative": Bad(
        "cluster", "mode: inventory\ninventory:\n  b200: -2\n", 1, None, ("inventory counts must be zero or more",)),
    "branch_probabilities_not_summing_to_one": Bad("agent", """
        name: a
        nodes:
          - {id: start, kind: compute, cpu_s: 1}
          - {id: pick, kind: branch}
          - {id: x, kind: compute, cpu_s: 1}
          - {id: y, kind: compute, cpu_s: 1}
        edges:
          - {from: start, to: pick}
          - {from: pick, to: x, probability: 0.5}
          - {from: pick, to: y, probability: 0.4}
        """, 4, "nodes.1", ("probabilities leaving branch 'pick' sum to 0.9", "sum to 1")),
    "branch_edge_without_probability": Bad("agent", """
        name: a
        nodes:
          - {id: pick, kind: branch}
          - {id: x, kind: compute, cpu_s: 1}
          - {id: y, kind: compute, cpu_s: 1}
        edges:
          - {from: pick, to: x, probability: 1}
          - {from: pick, to: y}
        """, 3, "nodes.0", ("has no probability",)),
    "probability_on_non_branch_edge": Bad("agent", """
        name: a
        nodes:
          - {id: x, kind: compute, cpu_s: 1}
          - {id: y, kind: compute, cpu_s: 1}
        edges:
          - {from: x, to: y, probability: 0.5}
        """, 6, "edges.0.probability", ("'x' is a compute node",)),
    "probability_out_of_range": Bad("agent", """
        name: a
        nodes:
          - {id: pick, kind: branch}
          - {id: x, kind: compute, cpu_s: 1}
          - {id: y, kind: compute, cpu_s: 1}
        edges:
          - {from: pick, to: x, probability: 1.5}
          - {from: pick, to: y, probability: -0.5}
        """, 7, "edges.0.probability", ("less than or equal to 1",)),
    "duplicate_node_id": Bad("agent", """
        name: a
        nodes:
          - {id: x, kind: compute, cpu_s: 1}
          - {id: y, kind: compute, cpu_s: 1}
          - id: x
            kind: compute
            cpu_s: 2
        """, 5, "nodes.2.id", ("node id 'x' is used twice", "unique id")),
    "edge_to_missing_node": Bad("agent", """
        name: a
        nodes:
          - {id: x, kind: compute, cpu_s: 1}
          - {id: y, kind: compute, cpu_s: 1}
        edges:
          - {from: x, to: y}
          - from: y
            to: z
        """, 8, "edges.1.to", ("edge to 'z' names no node", "use one of: x, y")),
    "loop_body_missing": Bad("agent", """
        name: a
        nodes:
          - {id: x, kind: compute, cpu_s: 1}
          - id: l
            kind: loop
            bound: 2
            body: xx
        edges:
          - {from: x, to: l}
        """, 7, "nodes.1.body", ("loop 'l' body 'xx' names no node",)),
    "loop_without_edge_to_body": Bad("agent", """
        name: a
        nodes:
          - {id: x, kind: compute, cpu_s: 1}
          - {id: l, kind: loop, body: x, bound: 2}
        edges:
          - {from: x, to: l}
        """, 4, "nodes.1.body", ("has no edge to its body", "add an edge from: l to: x")),
    "loop_bound_out_of_range": Bad(
        "agent", "name: a\nnodes:\n  - {id: l, kind: loop, body: l, bound: 0}\n", 3, "nodes.0.bound",
        ("greater than or equal to 1",)),
    # the '[' left open on line 5 is noticed where the next item starts
    "invalid_yaml_syntax_reports_line": Bad("agent", """
        name: a
        nodes:
          - id: x
            kind: compute
            cpu_s: [1, 2
          - id: y
        """, 6, None, ("not valid YAML", "expected ',' or ']'", "indentation")),
    "tab_indentation_reports_line": Bad(
        "agent", "name: a\nnodes:\n\t- {id: x, kind: compute, cpu_s: 1}\n", 3, None,
        ("not valid YAML", "indentation")),
    **{f"top_level_must_be_mapping[{typename}]": Bad(
        "agent", text, 1, None, (f"expected a mapping at the top level, got {typename}",))
       for text, typename in (("- a\n- b\n", "list"), ("just text\n", "str"), ("", "NoneType"), ("42\n", "int"))},
    "unknown_node_kind": Bad("agent", """
        name: a
        nodes:
          - {id: x, kind: compute, cpu_s: 1}
          - id: y
            kind: retriever
        """, 5, "nodes.1.kind", ("unknown node kind 'retriever'", "memory_lookup", "known kind")),
    "missing_node_kind": Bad("agent", "name: a\nnodes:\n  - id: y\n    cpu_s: 1\n", 3, "nodes.0", ("'kind'",)),
    # value errors raised by the models' own validators also carry a fix
    "http_tool_without_endpoint": Bad(
        "agent", "name: a\nnodes:\n  - {id: t, kind: tool, protocol: http}\n", 3, "nodes.0", ("needs 'endpoint'",)),
    "k_larger_than_the_index": Bad(
        "agent", "name: a\nnodes:\n  - {id: m, kind: memory_lookup, index_vectors: 3, dimension: 8, k: 5}\n",
        3, "nodes.0", ("k=5 is larger than the index",)),
    "uniform_low_above_high": Bad(
        "agent", "name: a\nnodes:\n  - id: c\n    kind: compute\n    cpu_s: {dist: uniform, low: 2, high: 1}\n",
        5, "nodes.0.cpu_s", ("uniform low 2.0 is above high 1.0",)),
    "dist_missing_parameter": Bad(
        "agent", "name: a\nnodes:\n  - id: c\n    kind: compute\n    cpu_s: {dist: normal, mean: 2}\n",
        5, "nodes.0.cpu_s", ("a normal distribution needs mean, std; missing std",)),
    "unreadable_quantity": Bad(
        "agent", "name: a\nnodes:\n  - id: c\n    kind: compute\n    cpu_s: soon\n", 5, "nodes.0.cpu_s",
        ("cannot read 'soon'",)),
    "subagent_with_both_sources": Bad(
        "agent", "name: a\nnodes:\n  - id: s\n    kind: subagent\n    agent: x.yaml\n"
        "    graph: {nodes: [{id: c, kind: compute, cpu_s: 1}]}\n", 3, "nodes.0", ("exactly one of",)),
    "sla_interactive_needs_a_limit": Bad(
        "sla", "mode: interactive\nutilisation_cap: 0.5\n", 1, None, ("needs 'end_to_end' or LLM limits",)),
    "cluster_needs_devices": Bad("cluster", "name: c\nmode: unconstrained\n", 1, None, ("needs 'devices'",)),
    "cluster_bad_fabric_unit": Bad(
        "cluster", "devices: [b200]\nfabric:\n  scale_out_gbit_s: 400 ms\n", 3, "fabric.scale_out_gbit_s",
        ("'ms' is a unit of time",)),
    "yaml_python_tags_refused": Bad(
        "agent", "name: !!python/object/apply:os.getcwd []\nnodes: []\n", 1, None, ("not valid YAML",)),
    "two_documents_refused": Bad("agent", "name: a\n---\nname: b\n", 2, None, ("not valid YAML",)),
    "missing_extra_catalog_in_cluster": Bad(
        "cluster", "devices: [b200]\ncatalogs:\n  - none.yaml\n", 2, "catalogs", ("none.yaml", "file not found")),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_spec_gives_one_located_error(tmp_path: Path, catalog: Catalog, case: str) -> None:
    bad = BAD[case]
    path = write(tmp_path, f"{bad.kind}.yaml", bad.text)
    agent = agent_from_text(bad.agent, EMPTY) if bad.agent else None
    with pytest.raises(SpecError) as info:
        if bad.kind == "agent":
            load_agent(path, catalog if bad.shipped_catalog else EMPTY)
        elif bad.kind == "workload":
            load_workload(path, agent)
        elif bad.kind == "sla":
            load_sla(path, agent)
        else:
            load_cluster(path)
    check(info.value, path, bad.line, bad.field, *bad.needles)


def test_unknown_catalog_name_message_is_cut_before_known_list(tmp_path: Path, catalog: Catalog) -> None:
    """load._catalog_name means to cut the catalog's 'Known: <every name>' tail (split on '. Known:'),
    but CatalogError writes '? Known:' (with a suggestion) or '.  Known:' (without), so it never cuts."""
    for model in ("llama-3-70", "gpt-17"):
        path = write(tmp_path, "agent.yaml", LLM_AGENT.replace("llama-3-70b", model).replace("ouput", "output"))
        with pytest.raises(SpecError) as info:
            load_agent(path, catalog)
        assert f"unknown model '{model}'" in str(info.value)
        assert "Known:" not in str(info.value)
        assert "mixtral" not in str(info.value)  # not close to either name; only in the full list


def test_top_level_list_in_every_loader(tmp_path: Path) -> None:
    path = write(tmp_path, "spec.yaml", "- mode: interactive\n")
    for loader in (load_workload, load_sla, load_cluster):
        with pytest.raises(SpecError) as info:
            loader(path)
        check(info.value, path, 1, None, "expected a mapping at the top level, got list")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    for loader in (load_agent, load_workload, load_sla, load_cluster):
        with pytest.raises(SpecError) as info:
            loader(path)
        check(info.value, path, None, None, "file not found", "check the path")


def test_missing_subagent_file_names_that_file(tmp_path: Path) -> None:
    path = write(tmp_path, "agent.yaml", "name: a\nnodes:\n  - {id: s, kind: subagent, agent: parts/none.yaml}\n")
    with pytest.raises(SpecError) as info:
        load_agent(path, EMPTY)
    check(info.value, tmp_path / "parts" / "none.yaml", None, None, "file not found")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_agent(tmp_path, EMPTY)
    check(info.value, tmp_path, None, None, "cannot read file")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(SpecError) as info:
        load_agent(path, EMPTY)
    check(info.value, path, None, None, "cannot read file", "UTF-8")


# -- hostile YAML and paths ----------------------------------------------------------------------


def test_recursive_yaml_alias(tmp_path: Path) -> None:
    """`&x [*x]` is a list that contains itself; it must be refused, not recurse until Python gives up."""
    path = write(tmp_path, "agent.yaml", "name: a\nnodes: &x [*x]\n")
    with pytest.raises(SpecError) as info:
        load_agent(path, EMPTY)
    assert info.value.file == str(path)
    assert "Fix:" in str(info.value)


def test_deeply_nested_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "agent.yaml", "name: a\nnodes: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(SpecError) as info:
        load_agent(path, EMPTY)
    assert info.value.file == str(path)
    assert "Fix:" in str(info.value)


def test_nul_character_in_subagent_path(tmp_path: Path) -> None:
    path = write(tmp_path, "agent.yaml", 'name: a\nnodes:\n  - {id: s, kind: subagent, agent: "x\\0.yaml"}\n')
    with pytest.raises(SpecError) as info:
        load_agent(path, EMPTY)
    assert "Fix:" in str(info.value)


@pytest.mark.parametrize(
    "body",
    ["efficiency: [1, 2]", "efficiency: {gpu: [1]}", "devices: {mydev: [1]}", "models: {m: 5}"],
)
def test_malformed_extra_catalog_in_cluster(tmp_path: Path, body: str) -> None:
    """A cluster's own catalog file that is shaped wrongly must give a SpecError, not a crash."""
    write(tmp_path, "extra.yaml", body + "\n")
    path = write(tmp_path, "cluster.yaml", "devices: [b200]\ncatalogs: [extra.yaml]\n")
    with pytest.raises(SpecError) as info:
        load_cluster(path)
    assert "extra.yaml" in str(info.value)
    assert "Fix:" in str(info.value)


# -- the message format itself -------------------------------------------------------------------


def test_spec_error_format() -> None:
    err = SpecError("it is wrong", file="a.yaml", line=3, field="nodes.0.kind", fix="make it right")
    assert str(err) == "a.yaml:3: nodes.0.kind: it is wrong. Fix: make it right"
    assert str(SpecError("done.", fix="x")) == "done. Fix: x"
    assert str(SpecError("bare")) == "bare."


def test_spec_error_keeps_parent_directory_in_paths() -> None:
    """'..' is part of a relative path; tidying a doubled full stop must not rewrite it to '.'."""
    err = SpecError("file not found", file="../specs/agent.yaml", fix="check the path")
    assert str(err) == "../specs/agent.yaml: file not found. Fix: check the path"


def test_missing_file_given_with_parent_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    with pytest.raises(SpecError) as info:
        load_agent("../specs/agent.yaml", EMPTY)
    assert str(info.value).startswith("../specs/agent.yaml: file not found")
