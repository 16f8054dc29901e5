"""ONNX export of fine-tuned classifiers (`omoe-export`) and ONNX Runtime inference
(`omoe-infer`, `OMoEClassifier`)."""

from .inference import OMoEClassifier, Prediction

__all__ = ["OMoEClassifier", "Prediction"]
