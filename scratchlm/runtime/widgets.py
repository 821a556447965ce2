"""Interactive explorers: controls that redraw a figure when a value changes (introduced in Chapter 03).

Why not ``ipywidgets.interactive``: it calls the drawing function once when it is built, inside an
``Output`` widget. Every chapter shows that first figure statically anyway (the website has no kernel
behind the sliders), and when the book is built that capture is widget traffic the notebook client
must follow to the end of the cell: on a loaded 2-core machine the build of Chapter 04 stalled there
twice (the kernel idle, the client still waiting for the cell). :func:`explorer` draws nothing until a
control moves, so executing a chapter sends no widget output at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def explorer(draw: Callable[..., Any], /, **controls: Any) -> Any:
    """A box of ``controls`` above an output area where ``draw(**values)`` is redrawn on every change.

    ``controls`` maps each keyword of ``draw`` to an ipywidgets value widget (a slider, a dropdown...);
    keywords not given keep ``draw``'s defaults. Nothing is drawn when the box is built (see the
    module docstring); the box's ``redraw()`` draws with the current values on demand.
    """
    import ipywidgets as widgets

    if not callable(draw):
        raise TypeError(f"explorer() expects a drawing function first; got {type(draw).__name__}")
    if not controls:
        raise ValueError("explorer() needs at least one control, e.g. d=ipywidgets.IntSlider(...)")
    for name, control in controls.items():
        if not isinstance(control, widgets.ValueWidget):
            raise TypeError(f"control {name!r} must be an ipywidgets value widget (IntSlider, Dropdown, ...); "
                            f"got {type(control).__name__}")
    out = widgets.Output()

    def redraw(_change: Any = None) -> None:
        with out:
            out.clear_output(wait=True)
            draw(**{name: control.value for name, control in controls.items()})

    for control in controls.values():
        control.observe(redraw, names="value")
    box = widgets.VBox([*controls.values(), out])
    box.redraw = redraw  # type: ignore[attr-defined]
    return box
