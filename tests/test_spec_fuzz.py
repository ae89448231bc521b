"""Fuzz the spec loaders: whatever the YAML, the only exception that may escape is SpecError."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.catalog.catalog_schema import Device, Efficiency, ModelSpec, PriceProfile, Sourced, TcoProfile
from terrazzo.errors import SpecError
from terrazzo.spec import agent as agent_mod
from terrazzo.spec.agent import NODE_KINDS, Agent
from terrazzo.spec.cluster import Cluster, Fabric
from terrazzo.spec.distributions import Dist
from terrazzo.spec.sla import EndToEnd, LlmLimits, Sla
from terrazzo.spec.spec_loader import agent_from_text, load_cluster, load_sla, load_workload
from terrazzo.spec.workload import Arrival, TokenOverride, Workload


def fuzz(examples: int) -> settings:
    """Hypothesis settings for one fuzz test; all of them together run in about 15 s on 2 cores."""
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])



def _field_names(*models: type[BaseModel]) -> list[str]:
    names: set[str] = set()
    for model in models:
        for name, info in model.model_fields.items():
            names.add(name)
            if info.alias:
                names.add(info.alias)
    return sorted(names)


NODE_MODELS = [
    m for m in vars(agent_mod).values()
    if isinstance(m, type) and issubclass(m, agent_mod.NodeBase) and m is not agent_mod.NodeBase
]
AGENT_KEYS = _field_names(Agent, agent_mod.AgentGraph, agent_mod.Edge, Dist, *NODE_MODELS)
WORKLOAD_KEYS = _field_names(Workload, Arrival, TokenOverride, Dist)
SLA_KEYS = _field_names(Sla, LlmLimits, EndToEnd)
CLUSTER_KEYS = _field_names(Cluster, Fabric)
CATALOG_SECTIONS = ["devices", "models", "price_profiles", "tco_profiles", "efficiency"]
NAMES = [
    "llama-3-70b", "llama-3-8b", "whisper-large-v3", "all-minilm-l6-v2", "llama-3-70", "h100", "h100-sxm", "h10",
    "b200", "gaudi3", "paper-2507.19635", "think", "asr", "a", "b", "x", "default", "poisson", "gamma", "trace",
    "interactive", "offline", "inventory", "unconstrained", "own-and-buy", "http", "python", "all", "any",
    "fixed", "uniform", "normal", "lognormal", "exponential", "empirical", "bf16", "fp8", "hnsw", *NODE_KINDS,
]
UNIT_STRINGS = [
    "300 ms", "2 KiB", "400 Gb/s", "5 MB", "-1 /s", "1e400 s", "0 s", "8k", "12 rpm", "3 parsecs", "1.5", "-0",
    "nan", "inf", ".5 h", "10 µs", "2 GiB/s", "1,5 s", "+", "e5", "1e", " ", "",
]
JUNK = [
    "{", "}", "[", "]", ":", ": :", "- ", "\t", "\n", "&a [*a]", "*nope", "&x", "!!python/object:os.system",
    "!!binary xyz", "---\n", "...\n", "%YAML 1.1\n", "? [a]: b\n", '"\\0"', "'", '"', "#", "|", ">", "\x00",
    "\ufeff", "\u2028", "<<: {}", "2001-01-01", "0x1F", "0o17", "~", ".nan", "-.inf", "1e999", "[" * 500,
]

scalars = (
    st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.none()
    | st.sampled_from(NAMES + UNIT_STRINGS)
    | st.text(max_size=12)
)


def documents(keys: list[str]) -> st.SearchStrategy[Any]:
    key = st.sampled_from(keys) | st.sampled_from(NAMES) | st.text(max_size=8)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(key, inner, max_size=5),
        max_leaves=25,
    )


def top_level(keys: list[str]) -> st.SearchStrategy[Any]:
    key = st.sampled_from(keys) | st.text(max_size=8)
    return st.dictionaries(key, documents(keys), max_size=6) | documents(keys)


def to_yaml(doc: Any) -> str:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


def only_spec_error(load: Any, *args: Any) -> Any:
    """Run a loader; a SpecError is fine (and must say where), anything else fails the test."""
    try:
        return load(*args)
    except SpecError as err:
        assert str(err)
        assert err.file, str(err)
        return None


def check_agent_text(text: str, catalog: Catalog) -> None:
    agent = only_spec_error(agent_from_text, text, catalog, "fuzz.yaml")
    if agent is not None:  # a spec that loads must also have defined visits
        visits = agent.graph.visits()
        assert all(math.isfinite(v) and v >= 0 for v in visits.values()), visits


# A valid agent using every node kind (an inline sub-agent, a loop, a branch, a join).
VALID_AGENT = textwrap.dedent("""
    name: everything
    description: one of each node kind
    nodes:
      - {id: asr, kind: stt, audio_s: 6 s}
      - {id: recall, kind: memory_load, store: users, data_bytes: 2 KiB}
      - {id: ctx, kind: compute, cpu_s: 1 ms, join: all}
      - id: think
        kind: llm
        model: llama-3-70b
        input_tokens: {dist: lognormal, mean: 800, cv: 0.4}
        output_tokens: {dist: uniform, low: 50, high: 300}
      - {id: route, kind: branch}
      - {id: search, kind: tool, protocol: http, endpoint: "https://s.example", latency_s: 300 ms}
      - {id: calc, kind: tool, protocol: python, function: "m:f", cpu_s: {dist: exponential, mean: 5 ms}}
      - {id: again, kind: loop, body: think, bound: 3}
      - {id: lookup, kind: memory_lookup, index_vectors: 10000, dimension: 384, k: 4}
      - {id: emb, kind: embed, tokens: 64}
      - {id: rank, kind: compute, cpu_s: 2 ms}
      - {id: remember, kind: memory_store, data_bytes: {dist: empirical, values: [1 KiB, 4 KiB], weights: [1, 3]}}
      - {id: speak, kind: tts, input_tokens: 200}
      - id: helper
        kind: subagent
        graph:
          nodes:
            - {id: h1, kind: compute, cpu_s: 1 ms}
            - {id: h2, kind: llm, model: llama-3-8b, input_tokens: 200, output_tokens: 20}
          edges:
            - {from: h1, to: h2}
    edges:
      - {from: asr, to: ctx, data_bytes: 1 KiB}
      - {from: recall, to: ctx}
      - {from: ctx, to: think}
      - {from: think, to: route}
      - {from: route, to: search, probability: 0.2}
      - {from: route, to: calc, probability: 0.1}
      - {from: route, to: emb, probability: 0.3}
      - {from: route, to: speak, probability: 0.4}
      - {from: search, to: again}
      - {from: calc, to: again}
      - {from: again, to: think}
      - {from: again, to: speak}
      - {from: emb, to: lookup}
      - {from: lookup, to: rank}
      - {from: rank, to: helper}
      - {from: helper, to: remember}
      - {from: remember, to: speak}
""")
VALID_WORKLOAD = {"name": "w", "arrival": {"process": "gamma", "rate_per_s": "120 rpm", "cv": 2},
                  "duration_s": "10 min", "tokens": {"think": {"input_tokens": 500, "output_tokens": "1k"}}}
VALID_SLA = {"mode": "interactive", "end_to_end": {"latency_s": "2 s", "percentile": 95},
             "llm_default": {"ttft_s": "300 ms", "tbt_s": 0.05}, "llm": {"think": {"ttft_s": 0.2}},
             "utilisation_cap": 0.7}
VALID_CLUSTER = {"name": "c", "mode": "own-and-buy", "inventory": {"h100": 8}, "buy": ["b200", "gaudi3"],
                 "fabric": {"scale_out_gbit_s": "400 Gb/s", "scale_up_domain": 8}}


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a parsed document: mapping keys and list indexes, depth first."""
    out: list[tuple[Any, ...]] = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    for k, v in items:
        out.append((*prefix, k))
        out += _paths(v, (*prefix, k))
    return out


def _with_unit(x: float) -> st.SearchStrategy[str]:
    return st.sampled_from(["ms", "s", "KiB", "MB", "Gb/s", "rpm", "tok", "k", "parsec", "", "h"]).map(
        lambda u: f"{x} {u}".strip()
    )


@st.composite
def mutated(draw: st.DrawFn, base: Any, keys: list[str]) -> Any:
    """Copy of `base` with a few random edits: delete a key, change a value's type, number -> string
    with a unit, negative numbers, insert a plausible key with junk."""
    doc = yaml.safe_load(yaml.safe_dump(base))  # deep copy
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        value = parent[last]
        op = draw(st.sampled_from(["delete", "retype", "unit", "negate", "insert", "junk"]))
        if op == "delete":
            del parent[last]
        elif op == "retype":
            parent[last] = draw(documents(keys))
        elif op == "unit" and isinstance(value, int | float) and not isinstance(value, bool):
            parent[last] = draw(_with_unit(value))
        elif op == "negate" and isinstance(value, int | float) and not isinstance(value, bool):
            parent[last] = -value if value else -1
        elif op == "insert" and isinstance(value, dict):
            value[draw(st.sampled_from(keys))] = draw(scalars)
        elif op == "insert" and isinstance(value, list):
            value.insert(draw(st.integers(0, len(value))), draw(documents(keys)))
        else:
            parent[last] = draw(st.sampled_from(JUNK + UNIT_STRINGS))
    return doc


@st.composite
def text_mutated(draw: st.DrawFn, text: str) -> str:
    """Raw text edits: insert junk, cut a slice, duplicate or drop a line."""
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["insert", "cut", "dup", "drop"]))
        if op == "insert":
            i = draw(st.integers(0, len(text)))
            text = text[:i] + draw(st.sampled_from(JUNK) | st.text(max_size=6)) + text[i:]
        elif op == "cut":
            i = draw(st.integers(0, len(text)))
            text = text[:i] + text[i + draw(st.integers(1, 40)):]
        else:
            lines = text.split("\n")
            j = draw(st.integers(0, len(lines) - 1))
            lines[j:j + 1] = [lines[j], lines[j]] if op == "dup" else []
            text = "\n".join(lines)
    return text


def test_valid_documents_load(catalog: Catalog, tmp_path: Path) -> None:
    """The fuzzers' seeds are valid, so mutations start from something that loads."""
    agent = agent_from_text(VALID_AGENT, catalog, "fuzz.yaml")
    assert agent.graph.visits()["speak"] == pytest.approx(1.0)
    for name, doc, load in (("w.yaml", VALID_WORKLOAD, load_workload), ("s.yaml", VALID_SLA, load_sla)):
        (tmp_path / name).write_text(to_yaml(doc))
        load(tmp_path / name, agent)
    (tmp_path / "c.yaml").write_text(to_yaml(VALID_CLUSTER))
    cluster, _ = load_cluster(tmp_path / "c.yaml")
    assert cluster.device_types == ["h100", "b200", "gaudi3"]


# -- agents from text ------------------------------------------------------------------------------


@fuzz(150)
@given(doc=top_level(AGENT_KEYS))
def test_fuzz_random_agent_documents(doc: Any, catalog: Catalog) -> None:
    check_agent_text(to_yaml(doc), catalog)


@fuzz(80)
@given(doc=mutated(yaml.safe_load(VALID_AGENT), AGENT_KEYS))
def test_fuzz_mutated_agent(doc: Any, catalog: Catalog) -> None:
    check_agent_text(to_yaml(doc), catalog)


@fuzz(100)
@given(text=text_mutated(VALID_AGENT))
def test_fuzz_agent_text_edits(text: str, catalog: Catalog) -> None:
    check_agent_text(text, catalog)


@fuzz(150)
@given(text=st.text(max_size=200) | st.sampled_from(JUNK).map(lambda j: f"name: a\nnodes: {j}\n"))
def test_fuzz_agent_arbitrary_text(text: str, catalog: Catalog) -> None:
    check_agent_text(text, catalog)


# -- workload, SLA and cluster files -----------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def llm_agent(catalog: Catalog) -> Agent:
    return agent_from_text(VALID_AGENT, catalog)


def _file(directory: Path, name: str, content: str) -> Path:
    path = directory / name
    path.write_text(content, encoding="utf-8")
    return path


@fuzz(150)
@given(doc=top_level(WORKLOAD_KEYS) | mutated(VALID_WORKLOAD, WORKLOAD_KEYS), with_agent=st.booleans())
def test_fuzz_workload(doc: Any, with_agent: bool, fuzz_dir: Path, llm_agent: Agent) -> None:
    path = _file(fuzz_dir, "workload.yaml", to_yaml(doc))
    only_spec_error(load_workload, path, llm_agent if with_agent else None)


@fuzz(150)
@given(doc=top_level(SLA_KEYS) | mutated(VALID_SLA, SLA_KEYS), with_agent=st.booleans())
def test_fuzz_sla(doc: Any, with_agent: bool, fuzz_dir: Path, llm_agent: Agent) -> None:
    path = _file(fuzz_dir, "sla.yaml", to_yaml(doc))
    only_spec_error(load_sla, path, llm_agent if with_agent else None)


@fuzz(150)
@given(doc=top_level(CLUSTER_KEYS) | mutated(VALID_CLUSTER, CLUSTER_KEYS))
def test_fuzz_cluster(doc: Any, fuzz_dir: Path) -> None:
    path = _file(fuzz_dir, "cluster.yaml", to_yaml(doc))
    only_spec_error(load_cluster, path)


CATALOG_KEYS = [*CATALOG_SECTIONS, *_field_names(Device, ModelSpec, PriceProfile, TcoProfile, Efficiency, Sourced)]


@fuzz(100)
@given(
    extra=st.dictionaries(st.sampled_from(CATALOG_SECTIONS), documents(CATALOG_KEYS), max_size=3)
    | top_level(CATALOG_KEYS)
)
def test_fuzz_cluster_own_catalog(extra: Any, fuzz_dir: Path) -> None:
    """A valid cluster naming a random catalog file of its own (`catalogs:`)."""
    _file(fuzz_dir, "own_catalog.yaml", to_yaml(extra))
    path = _file(fuzz_dir, "cluster_cat.yaml", to_yaml({**VALID_CLUSTER, "catalogs": ["own_catalog.yaml"]}))
    only_spec_error(load_cluster, path)


@fuzz(100)
@given(
    text=st.sampled_from([to_yaml(VALID_WORKLOAD), to_yaml(VALID_SLA), to_yaml(VALID_CLUSTER)]).flatmap(text_mutated),
    which=st.sampled_from(["workload", "sla", "cluster"]),
)
def test_fuzz_file_text_edits(text: str, which: str, fuzz_dir: Path) -> None:
    path = _file(fuzz_dir, f"{which}.yaml", text)
    only_spec_error({"workload": load_workload, "sla": load_sla, "cluster": load_cluster}[which], path)
