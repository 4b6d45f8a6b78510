"""What several test modules share."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread for the test, undone after: tiny models train many times faster without
    thread contention (5x on a busy 2-core machine). Yields the matching ``momos train`` flags."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield ["--threads", "1"]
    torch.set_num_threads(threads)


@pytest.fixture(params=["compiled", "pytorch"])
def path(request, monkeypatch):
    """Run the test through the numba kernels of its module's ``KERNELS`` module (e.g.
    ``momos.packing``), then through that module's PyTorch path, numba hidden from it."""
    module = request.module.KERNELS
    if request.param == "compiled" and module.numba is None:
        pytest.skip("numba is not installed")
    if request.param == "pytorch":
        monkeypatch.setattr(module, "numba", None)
    return request.param
