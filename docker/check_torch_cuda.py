"""Build-time guard: the torch build must match the CUDA of the base image.

Run in the Dockerfile's builder stage after torch is installed. It reads TORCH_INDEX_URL
(the build argument) and CUDA_VERSION (set by every nvidia/cuda base image). A CPU index
(.../whl/cpu) needs no CUDA and always passes; a .../whl/cuXY index requires torch built
for CUDA X.Y and a base image with CUDA X.Y. Exit status 1 with a reason otherwise.
"""

from __future__ import annotations

import os
import re
import sys


def expected_cuda(index_url: str) -> str | None:
    """'https://download.pytorch.org/whl/cu128' -> '12.8'; a CPU index -> None."""
    match = re.search(r"/cu(\d+)(\d)/?$", index_url)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def problems(index_url: str, torch_cuda: str | None, base_cuda: str) -> list[str]:
    wanted = expected_cuda(index_url)
    if wanted is None:
        return []
    found = []
    if not torch_cuda or not torch_cuda.startswith(f"{wanted}"):
        found.append(f"torch is built for CUDA {torch_cuda}, the index {index_url} for {wanted}")
    if not base_cuda.startswith(f"{wanted}."):
        found.append(f"the base image has CUDA {base_cuda or 'none'}, torch needs {wanted}")
    return found


def main() -> int:
    import torch

    index_url = os.environ.get("TORCH_INDEX_URL", "")
    torch_cuda = torch.version.cuda
    print(f"torch {torch.__version__}, CUDA {torch_cuda}, index {index_url or 'default'}")
    found = problems(index_url, torch_cuda, os.environ.get("CUDA_VERSION", ""))
    for problem in found:
        print(f"mismatch: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
