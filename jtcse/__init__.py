"""jtcse: train, tune, evaluate and ship JTCSE sentence embeddings reproducibly."""

__version__ = "0.1.0"


def load(path, **kwargs):
    """Open a trained tower, twin or package as an encoder with ``.encode(sentences, ...)``."""
    from jtcse.api import load as _load

    return _load(path, **kwargs)


__all__ = ["__version__", "load"]
