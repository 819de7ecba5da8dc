"""Fixtures shared by several test files."""

import os

import pytest


@pytest.fixture
def umask_022():
    """Run with a known umask (0o022), restored afterwards."""
    previous = os.umask(0o022)
    yield 0o022
    os.umask(previous)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: the machine is shared, and runs compared for equality must use the
    same count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
