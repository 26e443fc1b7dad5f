"""Schemathesis against the server's own OpenAPI spec (`/openapi.json`): no generated request gets a 5xx.

The server runs in-process (see test_serve.py) on a tiny random-weight model with a 64-token context, so every
generation is short. Each operation gets a bounded number of examples, both valid per the spec (positive) and
invalid (negative: the server must answer those with a 4xx, never a 5xx). A request is given 10 s: one the server
never answers is a bug too.

Schemathesis' pytest integration (`schema.parametrize`, `from_fixture`) does not run under pytest 9 (it reads a
removed `Item._nodeid`), so the operations are driven with Hypothesis directly.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup

from tests.serve.test_serve import InProcessServer, tiny_model

EXAMPLES_PER_OPERATION = 30


@pytest.fixture(scope="module")
def fuzz_server(tok) -> Iterator[InProcessServer]:
    srv = InProcessServer(tiny_model(tok.vocab_size), tok, max_batch=4, max_seq_len=64, max_queue=64)
    try:
        yield srv
    finally:
        srv.close()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_request_gets_a_server_error(fuzz_server, mode):
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    failures: dict[str, str] = {}
    n_ops = 0
    for result in schema.get_all_operations():
        op = result.ok()
        n_ops += 1

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            if isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = "tiny"  # a random name stops every request at the 404 for unknown models
            case.call_and_validate(checks=[not_a_server_error], timeout=10)

        try:
            check()
        except Unsatisfiable:  # negative mode: an operation without parameters has no invalid input
            assert mode is GenerationMode.NEGATIVE, op.label
        except (Exception, FailureGroup) as e:  # noqa: BLE001 - gather every operation's failures, report them all
            failures[op.label] = f"{type(e).__name__}: {e}"
    assert n_ops >= 9, "the spec lost routes"
    assert not failures, "\n\n".join(f"{label}:\n{msg}" for label, msg in failures.items())
