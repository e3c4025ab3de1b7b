"""detbench: benchmark mmyolo detectors across PyTorch, ONNX Runtime and TensorRT.

Importing this package must stay cheap and must not import torch, onnxruntime
or tensorrt: each backend imports its own heavy dependencies when it loads.
"""
__version__ = "0.1.0"
