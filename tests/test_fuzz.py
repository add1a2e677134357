"""Fuzzing validate, plan and the Terraform provider's builder: every mutated input ends in a valid plan or a
clear error, never a traceback (tests/fuzz_cases.py; bench/fuzz.py runs ten thousand cases)."""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings

from tests.fuzz_cases import check_tf, check_yaml, mutated, tf_states

OUTCOMES: Counter[str] = Counter()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_mutated_manifests_end_in_a_plan_or_a_clear_error(text: str) -> None:
    OUTCOMES["yaml " + check_yaml(text)] += 1


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tf_states())
def test_mutated_terraform_attributes_end_in_a_manifest_or_problems(state: dict) -> None:
    OUTCOMES["tf " + check_tf(state)] += 1


def test_the_fuzzing_reached_both_outcomes() -> None:
    """Runs after the two above (file order): a fuzzer that only ever produced errors would test little."""
    assert OUTCOMES["yaml valid"] and OUTCOMES["yaml refused"], OUTCOMES
    assert OUTCOMES["tf valid"] and OUTCOMES["tf refused"], OUTCOMES
