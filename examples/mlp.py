"""A small PyTorch model served by falrt: an MLP built once in `setup()`, on the GPU when
one is present, else on the CPU.

    pip install -e '.[torch]'          # or let the server build the app's environment
    falrt deploy examples/mlp.py::MLP
    falrt call local/mlp --sync --data "{\"features\": $(python -c 'print([0.5]*256)')}"

`torch` is imported inside `setup()` and the handler, never at the top of the module:
`falrt deploy` imports this file on the deploying machine to read the app's settings and
endpoint schemas, and that machine need not have torch. The runner gets torch from
`requirements` (the server installs them into the app's environment, cached by their hash).

The weights come from a fixed seed, so every runner (and bench/overhead.py's bare gRPC
baseline, which calls `build_model` and `predict` directly) computes the same logits.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

import falrt

IN_FEATURES = 256
HIDDEN = 512
CLASSES = 10
SEED = 0


class Input(msgspec.Struct):
    # Checked before the handler runs: a wrong length is an INVALID_ARGUMENT naming `$.features`.
    features: Annotated[list[float], msgspec.Meta(min_length=IN_FEATURES, max_length=IN_FEATURES)]


class Output(msgspec.Struct):
    logits: list[float]
    label: int
    device: str


def build_model(device: str | None = None) -> Any:
    """The MLP (256 -> 512 -> 512 -> 10, float32, fixed seed) in eval mode on `device`
    (CUDA when available if None)."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator().manual_seed(SEED)
    layers = [
        torch.nn.Linear(IN_FEATURES, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, CLASSES),
    ]
    model = torch.nn.Sequential(*layers)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.to(device=device, dtype=torch.float32).eval()


def predict(model: Any, features: list[float]) -> tuple[list[float], int]:
    """Logits and argmax of one input vector."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        x = torch.tensor(features, dtype=torch.float32, device=device).unsqueeze(0)
        logits = model(x)[0].float().cpu()
    return logits.tolist(), int(logits.argmax())


class MLP(falrt.App):
    app_name = "mlp"
    requirements = ["torch==2.13.0"]
    # One runner serves up to 16 requests at once (sync handlers run in worker threads;
    # torch releases the interpreter lock while it computes).
    max_multiplexing = 16
    max_concurrency = 1
    keep_alive = 600

    def setup(self) -> None:
        import torch

        # A batch-1 MLP gains nothing from intra-op threads; they only contend with the
        # requests running in other threads. (Set here on the main thread, it holds in the
        # threads that run `classify` too: the runner carries it into them.)
        torch.set_num_threads(1)
        self.model = build_model()
        self.device = str(next(self.model.parameters()).device)
        predict(self.model, [0.0] * IN_FEATURES)  # warm-up: first call allocates
        print(f"MLP ready on {self.device}")

    @falrt.endpoint("/")
    def classify(self, request: Input) -> Output:
        logits, label = predict(self.model, request.features)
        return Output(logits=logits, label=label, device=self.device)
