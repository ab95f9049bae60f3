"""Test-only stand-in for torchvision.transforms (see the package docstring)."""


def __getattr__(name):
    raise AttributeError(f"torchvision stub (tests/stubs): torchvision.transforms.{name} is not available")
