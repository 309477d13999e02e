"""Serve's own limits on a real deployment: a full queue answers 503 with Retry-After, a request
not answered within ``request_timeout_s`` answers 408, and neither reaches the model as a 500.

The replica is made slow on purpose: one request at a time (``max_ongoing_requests: 1``), and a
batch that waits 2 s for company (``batch_wait_timeout_s``) before it runs."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from ray import serve

from raytrain.config.schema import ServeSpec
from raytrain.serve.app import ServedModel
from raytrain.serve.deployment import Deployment, deploy, stop

from .conftest import free_port

pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture(scope="module")
def slow_server(versions: dict[str, ServedModel]) -> Iterator[Deployment]:
    spec = ServeSpec(
        port=free_port(),
        max_ongoing_requests=1,
        max_queued_requests=1,
        max_batch_size=4,
        batch_wait_timeout_s=2.0,
        request_timeout_s=1.0,
    )
    yield deploy(versions["1"], spec=spec)
    stop()
    serve.shutdown()  # the proxy's timeout is Serve-wide: later tests start a fresh one


def test_a_full_queue_is_a_503_with_retry_after_and_a_slow_answer_a_408(
    slow_server: Deployment,
) -> None:
    body = {"instances": [[1.0] * 64]}

    def call(_: int) -> requests.Response:
        return requests.post(slow_server.predict_url, json=body, timeout=30)

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(call, range(4)))
    codes = sorted(r.status_code for r in responses)
    assert 503 in codes, codes  # one in the replica, one queued: the others are refused
    assert 408 in codes, codes  # the one in the replica waits 2 s for its batch: over 1 s
    assert 500 not in codes, codes
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers.get("Retry-After") == "1"
