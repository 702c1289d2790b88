from .synthesis import SynthesisInferTask, SynthesisRequestError

__all__ = ["SynthesisInferTask", "SynthesisRequestError"]
