"""book/check_profiles.py: reading glued checks back from an executed notebook, the margin table, and
one real run of a tiny notebook in a fresh kernel with seed/thread/step-cap overrides."""

from __future__ import annotations

import nbformat
import pytest

from book import check_profiles as cp


def _glue_output(name: str, text: str) -> dict:
    return nbformat.v4.new_output("display_data", data={cp.GLUE_MIME: text},
                                  metadata={"scrapbook": {"name": name, "mime_prefix": "application/papermill.record/"}})


def _executed(outputs: list[dict]) -> dict:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("...")
    cell.outputs = outputs
    nb.cells = [nbformat.v4.new_markdown_cell("# x"), cell]
    return nb


def test_glued_values_checks_and_trainings_are_read_back():
    nb = _executed([
        _glue_output("check_val_loss_value", "1.8"), _glue_output("check_val_loss_threshold", "2.0"),
        _glue_output("check_val_loss_op", "'<'"),
        _glue_output("check_acc_value", "0.5"), _glue_output("check_acc_threshold", "0.8"),
        _glue_output("check_acc_op", "'>'"), _glue_output("check_acc_skipped", "True"),
        _glue_output("check_broken_value", "nan"),  # no threshold/op: dropped
        _glue_output("train_lm_params", "1000"), _glue_output("train_lm_tokens", "5000"),
        _glue_output("other_number", "3"), _glue_output("numpy_number", "np.float64(0.25)"),
        nbformat.v4.new_output("stream", name="stdout", text="check_x_value 1\n"),  # printed, not glued
    ])
    glued = cp.glued_values(nb)
    assert glued["check_val_loss_op"] == "<" and glued["other_number"] == 3 and glued["numpy_number"] == 0.25
    checks = {c.metric: c for c in cp.checks_of(glued)}
    assert set(checks) == {"val_loss", "acc"}
    assert checks["val_loss"].passed and checks["val_loss"].margin == pytest.approx(0.2)
    assert checks["val_loss"].rel_margin == pytest.approx(0.1)
    assert checks["acc"].skipped and not checks["acc"].passed and checks["acc"].margin == pytest.approx(-0.3)
    assert cp.trainings_of(glued) == {"lm": (1000, 5000)}


def test_tables_flag_thin_and_failed_margins():
    run = cp.Run("04", "cpu", 1, 2, ok=True, checks=[cp.Check("acc", 0.81, ">", 0.8), cp.Check("loss", 1.0, "<", 2.0),
                                                     cp.Check("gap", 3.0, "<", 2.0)])
    other = cp.Run("04", "cpu", 2, 1, ok=True, checks=[cp.Check("acc", 0.95, ">", 0.8)])
    verdicts = {row[4]: row[-1] for row in cp.check_rows([run], thin=0.05)}
    assert verdicts == {"acc": "THIN", "loss": "PASS", "gap": "FAIL"}
    summary = {row[2]: row for row in cp.summary_rows([run, other], thin=0.05)}
    assert summary["acc"][3] == 2 and summary["acc"][-1] == "THIN"  # the worst of both seeds
    assert cp.fmt_time(41.2) == "41 s" and cp.fmt_time(192) == "3.2 min"
    rows = cp.training_rows([cp.Run("01", "gpu", None, None, trainings={"lm": (10**6, 10**8)})], tflops=100)
    assert rows == [["01", "gpu", "lm", "1,000,000", "100,000,000", "6e+14", "6 s"]]


def test_find_chapters():
    assert [p.name[:2] for p in cp.find_chapters(["1", "04"])] == ["01", "04"]
    assert cp.find_chapters(["all"]) == sorted(cp.CHAPTERS.glob("[0-9][0-9]*_*.ipynb"))
    assert [p.name for p in cp.find_chapters(["06b"])] == ["06b_speedrun.ipynb"]
    with pytest.raises(SystemExit, match="no chapter '99'"):
        cp.find_chapters(["99"])


NOTEBOOK = '''import os, torch, scratchlm
ctx = scratchlm.setup_chapter("99")
steps = scratchlm.capped(50)
scratchlm.check_metric("seed_plus_threads", ctx.seed + torch.get_num_threads(), "<", 10, needs_training=False)
scratchlm.check_metric("steps", steps, ">=", 50)
scratchlm.report_training("toy", params=10, tokens=steps)
'''
FAILING = 'scratchlm.check_metric("seed_again", ctx.seed, ">", 5, needs_training=False)'


def test_a_real_run_carries_the_overrides_into_the_kernel(tmp_path, monkeypatch):
    """One fresh kernel (seconds): seed 3 and 2 threads arrive, the cap applies, a failing check is reported."""
    monkeypatch.setenv("SCRATCHLM_SEED", "77")  # the caller's shell: replaced by what the run asks for
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(NOTEBOOK), nbformat.v4.new_code_cell(FAILING),
                nbformat.v4.new_code_cell("never = 1")]
    path = tmp_path / "99_toy.ipynb"
    nbformat.write(nb, path)
    run = cp.run_one(path, "smoke", seed=3, threads=2, max_steps=2, timeout=120, keep=tmp_path / "kept")
    assert not run.ok and "check seed_again failed" in run.error
    checks = {c.metric: c for c in run.checks}
    assert checks["seed_plus_threads"].value == 5 and checks["seed_plus_threads"].passed  # seed 3 + 2 threads
    assert checks["steps"].value == 2 and checks["steps"].skipped  # capped, and skipped in a dry run
    assert not checks["seed_again"].passed and not checks["seed_again"].skipped  # glued before it failed
    assert run.trainings == {"toy": (10, 2)} and run.wall_s > 0
    kept = list((tmp_path / "kept").glob("99_toy__*.ipynb"))
    assert len(kept) == 1 and "seed3" in kept[0].name
