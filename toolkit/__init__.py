"""Edge-deployment export toolkit: train a Keras image classifier (the reference MNIST CNN or your own), export it
to TFLite/LiteRT, ONNX, a web app and a microcontroller C array, prove every artifact equal to the Keras model,
and measure it.

The public Python API is `toolkit.api` (docs/python-api.md): `from toolkit import api`, then `api.export(model,
"ws")`, `api.verify("ws")`, `api.benchmark("ws")`, ... (`toolkit.export`, `toolkit.verify` and the like are the
modules that do the work). Nothing heavy is imported here, so that `import toolkit.runtimes` in an edge app
loads no TensorFlow and `toolkit --help` stays quick.
"""

__version__ = "0.1.0"
