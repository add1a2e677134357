"""Fuzzing kvtool's inputs at scale: mutated manifests through validate and plan, mutated Terraform attributes
through the provider's builder (tests/fuzz_cases.py). Prints the cases tried, their outcomes and the
tracebacks found (the goal: 0). `make test` runs a few hundred of the same cases (tests/test_fuzz.py).

Usage: python bench/fuzz.py [--cases 10000]
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, given, settings

from tests.fuzz_cases import check_tf, check_yaml, mutated, tf_states


def run(name: str, strategy, check, cases: int) -> tuple[Counter[str], list[str]]:
    outcomes: Counter[str] = Counter()
    tracebacks: list[str] = []

    @settings(max_examples=cases, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def case(value) -> None:
        try:
            outcomes[check(value)] += 1
        except Exception:  # a traceback a user would have seen: keep it, go on
            outcomes["traceback"] += 1
            tracebacks.append(traceback.format_exc(limit=-4) + f"input: {value!r:.500}")

    started = time.monotonic()
    case()
    print(f"{name}: {sum(outcomes.values())} cases in {time.monotonic() - started:.0f} s: "
          + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    return outcomes, tracebacks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10_000, help="cases per target (default 10000)")
    args = parser.parse_args()
    found: list[str] = []
    for name, strategy, check in (("validate + plan (YAML)", mutated(), check_yaml),
                                  ("Terraform provider builder", tf_states(), check_tf)):
        _, tracebacks = run(name, strategy, check, args.cases)
        found += tracebacks
    print(f"tracebacks found: {len(found)}")
    for tb in found[:5]:
        print(tb)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
