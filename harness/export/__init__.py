"""Deployable graphs of mmyolo detectors.

The exported graph must decode exactly as mmyolo's own ``predict_by_feat``
does, so that any accuracy or speed difference between the PyTorch reference
and an ONNX/TensorRT backend comes from the backend, never from a re-derived
decoder.  ``deploy`` builds the torch module, ``onnx_export`` serialises and
caches it, ``host_nms`` finishes a decode-only graph on the host exactly as
mmyolo would.
"""
