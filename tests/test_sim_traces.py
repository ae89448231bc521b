"""Trace loaders (Azure LLM inference, BurstGPT, simple) and the shipped synthetic samples."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from terrazzo.errors import SimError
from terrazzo.sim.traces import detect_format, load_trace

TRACES = Path(__file__).parent.parent / "examples" / "traces"


def test_azure_sample_loads_with_sub_second_timestamps():
    t = load_trace(TRACES / "azure-sample.csv")
    assert t.format == "azure" and len(t) > 1000
    assert t.arrival_s[0] == 0 and np.all(np.diff(t.arrival_s) >= 0)
    assert 250 < t.span_s < 301 and 4 < t.rate_per_s < 6.5
    assert t.input_tokens.min() >= 1 and 400 < t.input_tokens.mean() < 800


def test_burstgpt_sample_drops_failed_requests():
    t = load_trace(TRACES / "burstgpt-sample.csv")
    assert t.format == "burstgpt" and t.dropped > 0
    assert t.output_tokens.min() >= 1
    azure = load_trace(TRACES / "azure-sample.csv")
    assert len(t) + t.dropped == len(azure)  # the same synthetic requests in both files


def test_azure_timestamps_parse_to_the_100ns_tick(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,4808,10\n"
                 "2023-11-16 18:15:47.0000001,100,20\n2023-11-16 18:15:46.0000000,7,1\n")
    t = load_trace(f)
    assert t.arrival_s.tolist() == pytest.approx([0.0, 0.68059, 1.0000001], abs=1e-9)
    assert t.input_tokens.tolist() == [7, 4808, 100]  # sorted by time, tokens travel with their rows


def test_burstgpt_with_session_columns_and_simple_format(tmp_path):
    f = tmp_path / "b.csv"
    f.write_text("Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                 "5,s1,1.2,ChatGPT,472,18,490,Conversation log\n9,s2,0.8,GPT-4,100,0,100,API log\n"
                 "12,s1,2.0,ChatGPT,30,40,70,Conversation log\n")
    t = load_trace(f)
    assert t.arrival_s.tolist() == [0.0, 7.0] and t.dropped == 1
    g = tmp_path / "s.csv"
    g.write_text("arrival_s,input_tokens,output_tokens\n0.5,10,20\n1.5,30,40\n")
    s = load_trace(g)
    assert s.format == "simple" and s.scaled_to(2.0).arrival_s.tolist() == [0.0, 0.5]


@pytest.mark.parametrize("text,match", [
    ("a,b,c\n1,2,3\n", "unrecognised trace header"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "no requests"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,2\n", "does not parse"),
    ("Timestamp,Request tokens,Response tokens\n1,2\n", "expected 3 columns"),
])
def test_bad_traces_say_what_is_wrong(tmp_path, text, match):
    f = tmp_path / "t.csv"
    f.write_text(text)
    with pytest.raises(SimError, match=match):
        load_trace(f)


def test_missing_trace_file_points_at_the_samples(tmp_path):
    with pytest.raises(SimError, match="examples/traces"):
        load_trace(tmp_path / "nope.csv")
    assert detect_format(["TIMESTAMP", "ContextTokens", "GeneratedTokens"]) == "azure"


def test_sample_script_is_deterministic(tmp_path):
    script = TRACES / "make_samples.py"
    copy = tmp_path / "make_samples.py"
    copy.write_text(script.read_text())
    subprocess.run([sys.executable, str(copy)], check=True, capture_output=True)
    for name in ("azure-sample.csv", "burstgpt-sample.csv"):
        assert (tmp_path / name).read_text() == (TRACES / name).read_text()
