"""Fixtures shared by several test files."""

import os

import pytest


@pytest.fixture
def umask_022():
    """Run with a known umask (0o022), restored afterwards."""
    previous = os.umask(0o022)
    yield 0o022
    os.umask(previous)
