"""Test-only stand-in for torchaudio (see tests/stubs/kit/tlora_stub_kit.py).

ComfyUI 0.33 imports torchaudio at module level in ``comfy/sd.py`` (the LTX audio VAE) and in
audio nodes these tests never run; the registry's torchaudio builds need another torch than the
CPU torch used here. ``scripts/run.sh`` uses it only where the real one can't be imported (and
says so); a user's ComfyUI environment has the real one.
"""

from tlora_stub_kit import stand_in

stand_in(__name__)
