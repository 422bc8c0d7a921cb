"""kserve-cache: a mutating admission webhook giving KServe predictors a shared model cache."""

__version__ = "0.1.0"
