"""Which handler exceptions are GPU failures: the runner is then replaced and the request
retried on another runner (fal's SDK answers them with 503, which does the same).

As fal's SDK: a CUDA out-of-memory error, or an error whose type or message names one of
the GPU libraries.
"""

from __future__ import annotations

import re

_GPU_WORDS = re.compile(
    r"\b(cuda|cudnn|nvml|nccl|cublas|cufft|cusolver|cusparse|triton)\b|out of memory",
    re.IGNORECASE,
)


def is_gpu_failure(exc: BaseException) -> bool:
    kind = type(exc)
    if kind.__name__ == "OutOfMemoryError" and kind.__module__.startswith("torch"):
        return True
    return bool(_GPU_WORDS.search(f"{kind.__name__}: {exc}"))
