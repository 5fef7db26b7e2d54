"""Backends score a draft tree with the target model and keep its KV cache."""

from .hf import HFBackend

__all__ = ["HFBackend"]
