"""The front-end fit of a vLLM profile (terrazzo/profile/vllm_front_end.fit): from runs whose CPU follows known
per-request, per-prompt-token, per-step and per-token costs on both sides, it recovers each of them, the
client's per-prompt-token cost included (a token-id prompt's serialisation: it was missing, and a 2.4k-token
prompt's TTFT lost ~20 ms of client CPU), and the fixed latency that is left of the lone points; a simulator
cost built from it charges the client's prompt tokens only for a client that sends token ids."""

from __future__ import annotations

import pytest

from terrazzo.profile.vllm_front_end import GRID, FrontEndRun, fit
from terrazzo.sim.front_end import FrontEndCost

SERVER = (1.2e-3, 2.2e-6, 0.18e-3, 0.06e-3)  # per request, prompt token, step, output token
CLIENT = (3.0e-3, 9.6e-6, 0.05e-3)            # per request, prompt token, output token
LATENCY_S = 3.8e-3


def _runs() -> list[FrontEndRun]:
    out = []
    for conc, osl, isl in GRID:
        n = max(24 if osl <= 2 else 8, 2 * conc)
        steps = osl * max(1, n // conc)  # any count independent of tokens across runs will do
        prompt, tokens = n * isl, n * osl
        server = SERVER[0] * n + SERVER[1] * prompt + SERVER[2] * steps + SERVER[3] * tokens
        client = CLIENT[0] * n + CLIENT[1] * prompt + CLIENT[2] * tokens
        out.append(FrontEndRun(conc, n, prompt, tokens, steps, server, client, 1.0))
    return out


def _lone(isl: int) -> float:
    """A lone one-token request's time outside the engine at `isl` prompt tokens."""
    return (LATENCY_S + SERVER[0] + SERVER[2] + SERVER[3] + CLIENT[0] + CLIENT[2]
            + isl * (SERVER[1] + CLIENT[1]))


def test_fit_recovers_every_cost_and_the_latency():
    got = fit(_runs(), [(i, _lone(i)) for i in (16, 256, 1024, 2048)])
    assert got.request_cpu_ms == pytest.approx(SERVER[0] * 1e3, rel=1e-6)
    assert got.prompt_token_cpu_ms == pytest.approx(SERVER[1] * 1e3, rel=1e-6)
    assert got.step_cpu_ms == pytest.approx(SERVER[2] * 1e3, rel=1e-6)
    assert got.token_cpu_ms == pytest.approx(SERVER[3] * 1e3, rel=1e-6)
    assert got.client_request_cpu_ms == pytest.approx(CLIENT[0] * 1e3, rel=1e-6)
    assert got.client_prompt_token_cpu_ms == pytest.approx(CLIENT[1] * 1e3, rel=1e-6)
    assert got.client_token_cpu_ms == pytest.approx(CLIENT[2] * 1e3, rel=1e-6)
    assert got.latency_ms == pytest.approx(LATENCY_S * 1e3, rel=1e-6)


def test_the_client_prompt_cost_applies_to_token_id_clients_only():
    got = fit(_runs(), [(i, _lone(i)) for i in (16, 256, 1024, 2048)])
    section = {k: getattr(got, k) for k in ("request_cpu_ms", "prompt_token_cpu_ms", "step_cpu_ms", "token_cpu_ms",
                                            "client_request_cpu_ms", "client_token_cpu_ms",
                                            "client_prompt_token_cpu_ms", "latency_ms")}
    ids = FrontEndCost.from_profile(section, client_on_core=True)
    text = FrontEndCost.from_profile(section, client_on_core=True, client_sends_ids=False)
    alone = FrontEndCost.from_profile(section, client_on_core=False)
    assert ids is not None and text is not None and alone is not None
    assert ids.prompt_token_cpu_s == pytest.approx(SERVER[1] + CLIENT[1])
    assert text.prompt_token_cpu_s == pytest.approx(SERVER[1]) == alone.prompt_token_cpu_s
    assert text.request_cpu_s == pytest.approx(SERVER[0] + CLIENT[0]) == ids.request_cpu_s
    assert alone.request_cpu_s == pytest.approx(SERVER[0])
    # an older profile (no client prompt term) still loads, charging nothing for it
    del section["client_prompt_token_cpu_ms"]
    old = FrontEndCost.from_profile(section, client_on_core=True)
    assert old is not None and old.prompt_token_cpu_s == pytest.approx(SERVER[1])
