"""Test session setup.

Triton reads TRITON_INTERPRET when it is first imported, so it is set here,
before any test imports it: without a GPU the Triton kernels run in Triton's
CPU interpreter (slow: the kernel tests keep sizes small there).
"""
import os

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
