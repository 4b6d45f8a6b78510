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
