"""ONNX export of fine-tuned classifiers, taggers and readers (`omoe-export`) and ONNX Runtime
inference (`omoe-infer`; `load_model`, which picks `OMoEClassifier`, `OMoETagger` or
`OMoEReader` from the file)."""

from .inference import load_model
from .reader import Answer, OMoEReader
from .sentences import OMoEClassifier, Prediction

__all__ = ["Answer", "OMoEClassifier", "OMoEReader", "OMoETagger", "Prediction", "load_model"]


def __getattr__(name: str):
    """OMoETagger on first use: it imports seqeval (and scikit-learn), which sentence
    classifiers do not need."""
    if name == "OMoETagger":
        from .tagger import OMoETagger

        return OMoETagger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
