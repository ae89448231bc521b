"""The vLLM profile's settle rule: a point whose repeats disagree is measured again, one that agrees is not."""

from terrazzo.profile.vllm_profile import SETTLED_SPREAD, unsettled


def test_agreeing_repeats_are_settled():
    assert not unsettled([0.100, 0.104, 0.098])
    assert not unsettled([0.1])  # one repeat: nothing to compare


def test_one_slow_repeat_of_few_asks_for_more():
    assert unsettled([0.119, 0.200, 0.418])  # a 2,048-token prefill measured in a busy spell
    assert unsettled([0.100, 0.140])  # 40 ms apart around a 120 ms median
    assert not unsettled([0.100, 0.125])  # 25 ms around 112.5 ms: within SETTLED_SPREAD
    assert SETTLED_SPREAD == 0.25


def test_an_outlier_among_many_no_longer_moves_the_quartiles():
    assert unsettled([0.1, 0.1, 0.1, 0.5])
    assert not unsettled([0.1, 0.1, 0.1, 0.1, 0.1, 0.5])
