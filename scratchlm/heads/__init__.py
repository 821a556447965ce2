"""Task heads for fine-tuning (Chapter 09): a linear-chain CRF."""

from .crf import CRF

__all__ = ["CRF"]
