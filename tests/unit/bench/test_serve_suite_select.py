"""Choosing the serving suite's scenarios by name (bench/serve_suite.py --scenarios)."""

import pytest

from bench.serve_suite import Scenario, StackRun, select

pytestmark = pytest.mark.timeout(30)

SUITE = (
    StackRun("llama-3.2-1b", "", (Scenario("1B ShareGPT, greedy", "sharegpt", 10),
                                  Scenario("1B 1024 in", "fixed", 4, 1, 1024, 1))),
    StackRun("llama-3.2-1b", "--x", (Scenario("1B ShareGPT, greedy, 2 steps in flight", "sharegpt", 10),)),
)


def names(runs: tuple[StackRun, ...]) -> list[list[str]]:
    return [[sc.name for sc in run.scenarios] for run in runs]


def test_a_part_of_a_name_chooses_every_scenario_holding_it_and_drops_empty_stacks():
    assert names(select(SUITE, ["ShareGPT"])) == [["1B ShareGPT, greedy"], ["1B ShareGPT, greedy, 2 steps in flight"]]
    assert names(select(SUITE, ["1024"])) == [["1B 1024 in"]]


def test_a_name_ending_in_a_dollar_sign_chooses_only_the_scenario_of_exactly_that_name():
    assert names(select(SUITE, ["1B ShareGPT, greedy$"])) == [["1B ShareGPT, greedy"]]


def test_no_names_keep_the_whole_suite():
    assert select(SUITE, []) is SUITE

