"""Show the source of a scratchlm object inside a notebook (introduced in Chapter 01).

The book never pastes package code into a chapter: it renders it from the package, so the code a
reader sees is the code that ran.
"""

from __future__ import annotations

import inspect
from typing import Any


def get_source(obj: Any) -> str:
    """The source text of a scratchlm function, class or method."""
    module = inspect.getmodule(obj)
    if module is None or not module.__name__.startswith("scratchlm"):
        raise TypeError(
            f"show_source renders scratchlm objects only; got {obj!r} from "
            f"{getattr(module, '__name__', 'an unknown module')}"
        )
    return inspect.getsource(obj)


def show_source(obj: Any):
    """Display the source of ``obj`` as highlighted Python (Markdown code block in Jupyter)."""
    from IPython.display import Markdown

    module = inspect.getmodule(obj)
    header = f"`{module.__name__}.{getattr(obj, '__qualname__', obj)}`"
    return Markdown(f"{header}\n\n```python\n{get_source(obj)}```")
