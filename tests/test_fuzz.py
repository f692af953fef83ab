"""Fuzz: mutated specs through the CLI's own path end in pcgraph's own one-line errors.

Uses the mutations of ``tools/fuzz_specs.py`` (which runs thousands and prints counts);
here hypothesis draws a few hundred so the suite stays fast.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fuzz_specs", ROOT / "tools" / "fuzz_specs.py")
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

BASES = [(p.name, p.read_text()) for p in sorted((ROOT / "graphs").glob("*.yaml"))]
DOCS = [yaml.safe_load(text) for _, text in BASES]


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(k=st.integers(0, len(BASES) - 1), seed=st.integers(0, 2**32 - 1), as_text=st.booleans())
def test_mutated_specs_end_in_pcgraph_errors(k, seed, as_text):
    rng = random.Random(seed)
    if as_text:
        text = fuzz.mutate_text(BASES[k][1], rng)
    else:
        try:
            text = yaml.safe_dump(fuzz.mutate_doc(DOCS[k], rng), sort_keys=False)
        except (RecursionError, yaml.YAMLError):
            return
    outcome, detail = fuzz.run_one(text)
    assert outcome != "crash", detail
