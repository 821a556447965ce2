"""Constants shared across the package."""

IGNORE_INDEX = -100
"""Label value that adds no loss: ``F.cross_entropy``'s default ``ignore_index``, and the Hugging Face
convention for padding and for prompt tokens a fine-tune must not learn. Introduced in Chapter 02."""
