"""schemathesis against the server's own OpenAPI description (``/v1/openapi.json``).

Every documented operation is called with data generated from its schema, valid
and invalid, with a real bearer token: the server never answers 5xx, answers
what the description promises (status, content type, response schema), and
refuses what the schema forbids. ``BISIK_SCHEMATHESIS_EXAMPLES`` sets examples
per operation (default 25); ``fuzz/run.py`` runs more.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode, checks

from bisik.server import ServerConfig
from bisik.server.rest._routes import _API
from tests.integration.test_fuzz import ErrorLog, ThreadedServer, World

EXAMPLES = int(os.environ.get("BISIK_SCHEMATHESIS_EXAMPLES", "25"))
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, ErrorLog]]:
    errors = ErrorLog()
    logging.getLogger("bisik").addHandler(errors)
    data: Path = tmp_path_factory.mktemp("openapi-server")
    try:
        with (
            ThreadedServer(ServerConfig(data_dir=data)) as server,
            httpx.Client(base_url=server.url, timeout=15) as http,
        ):
            world = World(server, http, errors)
            yield world, errors
            for sock in world.socks.values():
                sock.close()
    finally:
        logging.getLogger("bisik").removeHandler(errors)


def test_api_matches_its_description(api: tuple[World, ErrorLog]) -> None:
    world, errors = api
    schema = schemathesis.openapi.from_url(f"{world.server.url}/v1/openapi.json")
    headers = {"authorization": f"Bearer {world.tokens['mallory']}"}
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:

        @given(
            case=st.one_of(
                operation.as_strategy(GenerationMode.POSITIVE),
                operation.as_strategy(GenerationMode.NEGATIVE),
            )
        )
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def call(case: Any) -> None:
            errors.records.clear()
            case.call_and_validate(headers=headers, checks=CHECKS)
            assert not errors.records, errors.records[:3]

        try:
            call()
        except Exception as exc:  # every operation runs; the failures are listed together
            failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:1500]}")
    assert len(operations) >= 20
    assert not failures, "\n\n".join(failures)


def test_description_names_every_route(api: tuple[World, ErrorLog]) -> None:
    world, _ = api
    described = world.http.get("/v1/openapi.json").json()["paths"]
    for method, path, *_ in _API:
        assert method.lower() in described.get(path, {}), f"{method} {path} is not described"
