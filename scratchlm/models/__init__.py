"""The book's models, one file per model: ``gpt`` (Chapter 06), ``bert`` (Chapter 07), ``t5`` (Chapter 08).

Import the module you need (``from scratchlm.models.gpt import GPT, GPTConfig``); this package
imports nothing itself, so a chapter pays only for the model it uses.
"""
