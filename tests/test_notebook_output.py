"""What setup_chapter does to notebook output: NumPy scalars shown plainly, transformers' FutureWarnings quiet."""

import warnings

import numpy as np
from IPython.core.interactiveshell import InteractiveShell

from scratchlm.runtime.context import plain_numpy_scalars, quiet_library_warnings


def test_numpy_scalars_are_shown_as_plain_numbers_so_glue_can_format_them():
    shell = InteractiveShell.instance()
    plain = shell.display_formatter.formatters["text/plain"]
    assert plain(np.float64(0.25)) == "np.float64(0.25)"  # NumPy 2's repr: what myst-nb cannot parse
    plain_numpy_scalars()
    assert plain(np.float64(0.25)) == "0.25"
    assert plain(np.float32(0.5)) == "0.5"
    assert plain(np.int64(12)) == "12"
    assert plain(np.bool_(True)) == "True"
    assert float(plain(np.float64(59.82142857142857))) == 59.82142857142857  # no precision lost


def test_transformers_future_warnings_are_ignored_and_others_are_not():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_library_warnings()
        warnings.warn_explicit("`past_key_values` is deprecated", FutureWarning, "modeling_utils.py", 1,
                               module="transformers.modeling_utils")
        warnings.warn_explicit("ours", FutureWarning, "x.py", 1, module="scratchlm.models.gpt")
        warnings.warn_explicit("a real problem", UserWarning, "y.py", 1, module="transformers.trainer")
    assert [str(w.message) for w in caught] == ["ours", "a real problem"]
