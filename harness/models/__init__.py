"""Model sources: the explicit table of known mmyolo families and how to build them."""
from harness.models.table import MODELS, packaged_config

__all__ = ["MODELS", "packaged_config"]
