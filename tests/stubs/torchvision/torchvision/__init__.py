"""Test-only stand-in for torchvision (see tests/stubs/kit/tlora_stub_kit.py).

ComfyUI imports torchvision at import time in model and node files (Cosmos, Stable Cascade, SAM3,
RT-DETR, ...) that these tests never build; PyPI's torchvision does not import beside the CPU
torch used here.
"""

from tlora_stub_kit import stand_in

stand_in(__name__)
