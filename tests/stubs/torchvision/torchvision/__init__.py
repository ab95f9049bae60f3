"""Test-only stand-in for torchvision.

ComfyUI imports torchvision at import time in a few model files (Cosmos, Stable Cascade,
ACE) that these tests never build; PyPI's torchvision does not import beside the CPU torch
used here. The tests put this package on sys.path only when a real torchvision can't be
imported. Anything that actually uses it fails loudly.
"""


def __getattr__(name):
    raise AttributeError(f"torchvision stub (tests/stubs): torchvision.{name} is not available in this test environment")
