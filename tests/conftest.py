"""Test session setup.

Triton reads TRITON_INTERPRET when it is first imported, so it is set here,
before any test imports it: without a GPU the Triton kernels run in Triton's
CPU interpreter (slow: the kernel tests keep sizes small there).
"""
import os

import matplotlib
import pytest

matplotlib.use("Agg")

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to a busy second core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
