"""scratchlm.explorer: nothing drawn when built, a redraw with the current values on every change."""

import ipywidgets as widgets
import pytest

import scratchlm


def test_nothing_is_drawn_until_a_control_moves_then_every_change_redraws_with_all_values():
    calls = []
    d = widgets.IntSlider(value=64, min=8, max=256, step=8)
    kind = widgets.Dropdown(options=["a", "b"], value="a")
    box = scratchlm.explorer(lambda d, kind, ax=None: calls.append((d, kind, ax)), d=d, kind=kind)
    assert calls == []  # ipywidgets.interactive would have drawn once here
    assert list(box.children[:2]) == [d, kind] and isinstance(box.children[2], widgets.Output)
    d.value = 128
    kind.value = "b"
    assert calls == [(128, "a", None), (128, "b", None)]
    box.redraw()
    assert calls[-1] == (128, "b", None)


def test_a_control_may_be_called_draw():
    seen = []
    slider = widgets.IntSlider(value=0, min=0, max=3)
    scratchlm.explorer(lambda draw: seen.append(draw), draw=slider)  # the function is positional-only
    slider.value = 2
    assert seen == [2]


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="drawing function"):
        scratchlm.explorer(3, d=widgets.IntSlider())
    with pytest.raises(ValueError, match="at least one control"):
        scratchlm.explorer(print)
    with pytest.raises(TypeError, match="control 'd' must be an ipywidgets value widget"):
        scratchlm.explorer(print, d=5)
