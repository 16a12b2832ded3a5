"""Edge-deployment export toolkit: train a Keras image classifier (the reference MNIST CNN or your own), export it
to TFLite/LiteRT, ONNX, a web app and a microcontroller C array, prove every artifact equal to the Keras model,
and measure it.

The public Python API is `toolkit.api` (docs/python-api.md) and `toolkit.Workspace`: `from toolkit import api`,
then `api.export(model, "ws")`, `api.verify("ws")`, `api.benchmark("ws")`, ... (`toolkit.export`,
`toolkit.verify` and the like are the modules that do the work). Nothing heavy is imported here, so that
`import toolkit.runtimes` in an edge app loads no TensorFlow and `toolkit --help` stays quick.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`toolkit.Workspace`, imported on first use (PEP 562), so that `import toolkit` stays free of it."""
    if name == "Workspace":
        from toolkit.workspace import Workspace

        return Workspace
    raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
