"""Fuzz the server's OpenAPI schema with schemathesis against a real uvicorn on loopback: no
request, however malformed, may get a server error (5xx) or kill the server."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from serving import TOKEN, Server

EXAMPLES = 25


def test_no_request_gets_a_server_error(server: Server) -> None:
    schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{server.port}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12  # every route is in the schema
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case: schemathesis.Case) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {TOKEN}"}
            case.call_and_validate(checks=[not_a_server_error], timeout=60)

        fuzz()
    assert server.call("GET", "/health", token=None)[0] == 200  # still up, and still right
    assert server.call("POST", "/v1/classify", {"inputs": "glad sky"})[0] == 200
