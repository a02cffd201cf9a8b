"""Fixtures shared by the curation tests."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models are many small ops: on a busy machine, torch's spinning worker threads only slow them down."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
