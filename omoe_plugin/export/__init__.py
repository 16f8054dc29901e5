"""ONNX export of fine-tuned classifiers, taggers and readers (`omoe-export`) and ONNX Runtime
inference (`omoe-infer`, `OMoEClassifier`, `OMoETagger`, `OMoEReader`)."""

from .inference import OMoEClassifier, Prediction
from .reader import Answer, OMoEReader

__all__ = ["Answer", "OMoEClassifier", "OMoEReader", "OMoETagger", "Prediction"]


def __getattr__(name: str):
    """OMoETagger on first use: it imports seqeval (and scikit-learn), which sentence
    classifiers do not need."""
    if name == "OMoETagger":
        from .tagger import OMoETagger

        return OMoETagger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
