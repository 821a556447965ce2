"""Tests for the core of scratchlm: profiles, runtime, source and plotting."""

import ast
import inspect
import random
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import scratchlm  # noqa: E402
from scratchlm.runtime import context as runtime  # noqa: E402
from scratchlm.runtime import plotting, profiles, source  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ----------------------------------------------------------------------------- profiles


@pytest.mark.parametrize("raw, expected", [("smoke", "smoke"), (" CPU ", "cpu"), ("Gpu", "gpu")])
def test_current_profile_reads_the_environment(monkeypatch, raw, expected):
    monkeypatch.setenv("SCRATCHLM_PROFILE", raw)
    assert profiles.current_profile() == expected


def test_current_profile_defaults_to_the_hardware(monkeypatch):
    monkeypatch.delenv("SCRATCHLM_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert profiles.current_profile() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert profiles.current_profile() == "gpu"
    monkeypatch.setenv("SCRATCHLM_PROFILE", "")  # empty means unset
    assert profiles.current_profile() == "gpu"


def test_invalid_profile_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("SCRATCHLM_PROFILE", "laptop")
    with pytest.raises(ValueError, match=r"SCRATCHLM_PROFILE must be one of smoke, cpu, gpu; got 'laptop'"):
        profiles.current_profile()
    with pytest.raises(ValueError, match="SCRATCHLM_PROFILE"):
        scratchlm.by_profile(smoke=1, cpu=2, gpu=3)


@pytest.mark.parametrize("name, expected", [("smoke", 1), ("cpu", 2), ("gpu", 3)])
def test_by_profile_picks_the_active_value(monkeypatch, name, expected):
    monkeypatch.setenv("SCRATCHLM_PROFILE", name)
    assert scratchlm.by_profile(smoke=1, cpu=2, gpu=3) == expected


def test_by_profile_explicit_profile_and_all_three_required(monkeypatch):
    monkeypatch.setenv("SCRATCHLM_PROFILE", "smoke")
    assert scratchlm.by_profile(smoke="s", cpu="c", gpu="g", profile="gpu") == "g"
    with pytest.raises(TypeError, match="gpu"):
        scratchlm.by_profile(smoke=1, cpu=2)  # a chapter cannot forget a budget
    with pytest.raises(TypeError):
        scratchlm.by_profile(1, 2, 3)  # keyword-only: no silent mix-up of the order
    with pytest.raises(ValueError, match="profile must be one of smoke, cpu, gpu; got 'tpu'"):
        scratchlm.by_profile(smoke=1, cpu=2, gpu=3, profile="tpu")


# ----------------------------------------------------------------------------- runtime


def _draw():
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), torch.randn(2, 2).tolist()


def test_seed_everything_makes_all_generators_reproducible():
    assert runtime.seed_everything(123) == 123
    first = _draw()
    runtime.seed_everything(123)
    assert _draw() == first
    runtime.seed_everything(124)
    assert _draw() != first


@pytest.mark.parametrize("bad", [-1, 1.5, "7", True, None])
def test_seed_everything_rejects_bad_seeds(bad):
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        runtime.seed_everything(bad)


def test_get_device_forced_cpu(monkeypatch):
    monkeypatch.delenv("SCRATCHLM_DEVICE", raising=False)
    assert runtime.get_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("SCRATCHLM_DEVICE", "cpu")
    assert runtime.get_device() == torch.device("cpu")


def test_get_device_falls_back_to_cpu_without_accelerators(monkeypatch):
    monkeypatch.delenv("SCRATCHLM_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert runtime.get_device() == torch.device("cpu")


def test_get_device_cuda_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("SCRATCHLM_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'cuda:0' was requested but CUDA is not available"):
        runtime.get_device("cuda:0")
    monkeypatch.setenv("SCRATCHLM_DEVICE", "cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        runtime.get_device()


def test_get_device_mps_without_mps_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="MPS is not available"):
        runtime.get_device("mps")


def test_setup_chapter_banner_and_context(monkeypatch, capsys):
    monkeypatch.setenv("SCRATCHLM_PROFILE", "smoke")
    monkeypatch.setenv("SCRATCHLM_DEVICE", "cpu")
    ctx = scratchlm.setup_chapter("07", seed=5)
    out = capsys.readouterr().out
    assert "chapter 07" in out and "profile=smoke" in out and "device=cpu" in out and "seed=5" in out
    assert f"torch {torch.__version__}" in out
    assert ctx == runtime.ChapterContext(chapter="07", profile="smoke", device=torch.device("cpu"), seed=5)
    after_setup = torch.rand(2).tolist()
    scratchlm.seed_everything(5)
    assert torch.rand(2).tolist() == after_setup  # set-up seeded torch with its seed
    scratchlm.setup_chapter("07", quiet=True)
    assert capsys.readouterr().out == ""


# ----------------------------------------------------------------------------- source


def _source_from_file(module, name: str) -> str:
    """The exact text of a top-level def/class, found by parsing the file (not via inspect)."""
    text = Path(module.__file__).read_text()
    for node in ast.parse(text).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            lines = text.splitlines(keepends=True)
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            return "".join(lines[first - 1 : node.end_lineno])
    raise AssertionError(f"{name} not found in {module.__file__}")


@pytest.mark.parametrize(
    "obj, module, name",
    [
        (scratchlm.by_profile, profiles, "by_profile"),
        (scratchlm.seed_everything, runtime, "seed_everything"),
        (runtime.ChapterContext, runtime, "ChapterContext"),
        (plotting.plot_heatmap, plotting, "plot_heatmap"),
    ],
)
def test_get_source_is_the_real_file_text(obj, module, name):
    assert source.get_source(obj) == _source_from_file(module, name)


def test_get_source_of_a_method_is_indented_file_text():
    from scratchlm.data.registry import DatasetInfo

    text = source.get_source(DatasetInfo.file)
    assert text.lstrip().startswith("def file(self, name: str)")
    assert text in Path(inspect.getfile(DatasetInfo)).read_text()


@pytest.mark.parametrize("obj", [torch.nn.Linear, np.mean, len, 42])
def test_get_source_rejects_non_scratchlm_objects(obj):
    with pytest.raises(TypeError, match="scratchlm objects only"):
        source.get_source(obj)


def test_show_source_renders_a_python_block():
    md = source.show_source(scratchlm.by_profile)
    assert md.data.startswith("`scratchlm.runtime.profiles.by_profile`")
    assert "```python\n" + source.get_source(scratchlm.by_profile) in md.data
    with pytest.raises(TypeError):
        source.show_source(torch.nn.Linear)


# ----------------------------------------------------------------------------- plotting


def test_use_book_style_sets_rcparams():
    plt.rcParams["axes.grid"] = False
    plotting.use_book_style()
    for key, value in plotting.BOOK_STYLE.items():
        assert plt.rcParams[key] == value or tuple(plt.rcParams[key]) == value


def test_plot_loss_curves_labels_and_data():
    ax = plotting.plot_loss_curves(
        {"train": [3.0, 2.0, 1.5], "val": ([0, 10], torch.tensor([3.1, 1.9]))}, title="Loss of X", logy=True
    )
    assert ax.get_title() == "Loss of X"
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "loss (nats/token)"
    assert ax.get_yscale() == "log"
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["train"].get_xydata(), [[0, 3.0], [1, 2.0], [2, 1.5]])
    np.testing.assert_allclose(lines["val"].get_xydata(), [[0, 3.1], [10, 1.9]], rtol=1e-6)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "val"]


def test_plot_loss_curves_bad_input():
    with pytest.raises(ValueError, match="at least one curve"):
        plotting.plot_loss_curves({})
    with pytest.raises(ValueError, match=r"curve 'val': steps \(3,\) and losses \(2,\)"):
        plotting.plot_loss_curves({"val": ([0, 1, 2], [1.0, 2.0])})


def test_plot_heatmap_labels_and_values():
    m = np.arange(6.0).reshape(2, 3)
    ax = plotting.plot_heatmap(
        m, title="H", xlabels=["a", "b", "c"], ylabels=["r0", "r1"], xlabel="key", ylabel="query",
        colorbar_label="weight", annotate=True,
    )
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("H", "key", "query")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    np.testing.assert_array_equal(ax.images[0].get_array(), m)
    assert len(ax.texts) == 6 and ax.texts[-1].get_text() == "5.00"
    assert ax.images[0].colorbar.ax.get_ylabel() == "weight"


def test_plot_heatmap_bad_input():
    with pytest.raises(ValueError, match=r"2-D matrix; got shape \(2, 2, 2\)"):
        plotting.plot_heatmap(np.zeros((2, 2, 2)), title="x")
    with pytest.raises(ValueError, match="2 x labels for 3 columns"):
        plotting.plot_heatmap(np.zeros((2, 3)), title="x", xlabels=["a", "b"])
    with pytest.raises(ValueError, match="1 y labels for 2 rows"):
        plotting.plot_heatmap(np.zeros((2, 3)), title="x", ylabels=["a"])


def test_plot_attention_heads_grid_and_titles():
    w = torch.softmax(torch.randn(5, 3, 3), dim=-1)
    fig = plotting.plot_attention_heads(w, ["a", "b", "c"], title="Attn", max_cols=4)
    axes = fig.get_axes()
    assert len(axes) == 8  # 2 rows × 4 columns, the last 3 switched off
    assert [ax.get_title() for ax in axes[:5]] == [f"head {h}" for h in range(5)]
    assert not any(ax.axison for ax in axes[5:])
    assert fig._suptitle.get_text().startswith("Attn")
    np.testing.assert_allclose(axes[2].images[0].get_array(), w[2].numpy(), rtol=1e-6)


def test_plot_attention_heads_bad_input():
    with pytest.raises(ValueError, match=r"\(heads, T, T\); got shape \(3, 3\)"):
        plotting.plot_attention_heads(np.zeros((3, 3)), ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"\(heads, T, T\); got shape \(2, 3, 4\)"):
        plotting.plot_attention_heads(np.zeros((2, 3, 4)), ["a", "b", "c"])
    with pytest.raises(ValueError, match="2 tokens for attention over 3 positions"):
        plotting.plot_attention_heads(np.zeros((2, 3, 3)), ["a", "b"])


@pytest.mark.parametrize("profile, expect_single", [("smoke", True), ("cpu", False)])
def test_setup_chapter_runs_smoke_single_threaded(monkeypatch, profile, expect_single):
    monkeypatch.setenv("SCRATCHLM_PROFILE", profile)
    monkeypatch.setenv("SCRATCHLM_DEVICE", "cpu")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        scratchlm.setup_chapter("01", quiet=True)
        assert (torch.get_num_threads() == 1) is expect_single
    finally:
        torch.set_num_threads(before)
