"""Test-only stand-in for spandrel (ComfyUI's upscale-model library), used by the server of the
end-to-end and browser tests only when the real spandrel can't be imported.

Why: spandrel needs torchvision, which does not import beside the CPU torch used here, so
ComfyUI's ``UpscaleModelLoader`` node is missing; frontend 1.27.10 then fails to create *every*
model-loader node (its model-to-node map dereferences the missing node definition). With these
names importable the node registers; using it fails loudly.
"""


class _Unavailable:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("spandrel stub (tests/stubs): upscale models are not available in this test environment")


class ModelLoader(_Unavailable):
    pass


class ImageModelDescriptor(_Unavailable):
    pass
