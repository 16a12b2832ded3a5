"""Edge-deployment export toolkit: train the reference MNIST CNN, export it to TFLite/LiteRT and ONNX,
prove every artifact equal to the Keras model, and measure it."""

__version__ = "0.1.0"
