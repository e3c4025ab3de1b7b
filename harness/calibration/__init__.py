"""Calibration, backend-neutral: one image set, preprocessed like inference, feeding
ONNX Runtime Q/DQ generation, TensorRT 11 Q/DQ ONNX and TensorRT 10 calibrators alike."""
