"""Model implementations of the worker (one decoder serves every supported architecture)."""

from services.worker.models.decoder import CausalDecoder

__all__ = ["CausalDecoder"]
