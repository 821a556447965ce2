"""Run overrides from outside a chapter: SCRATCHLM_SEED / SCRATCHLM_THREADS (setup_chapter), the step cap
SCRATCHLM_MAX_STEPS (train, generate, StaticGenerator, train_char_lm, capped, dry_run), and the glued checks (check_metric,
report_training) that book/check_profiles.py reads."""

from __future__ import annotations

import pytest
import torch
from tiny_training import TinyLM, cfg, tiny_get_batch, tiny_loss

import scratchlm
from scratchlm.data import make_lm_get_batch
from scratchlm.decoding import StaticGenerator, generate
from scratchlm.models import GPT, GPTConfig
from scratchlm.models.char_lm import CharLM, train_char_lm
from scratchlm.runtime import checks, env_int
from scratchlm.runtime.profiles import MAX_STEPS_ENV, capped, dry_run, step_cap
from scratchlm.training import causal_lm_loss, evaluate, train

NAME = "SCRATCHLM_TEST_INT"


# ----------------------------------------------------------------------------- env_int


@pytest.mark.parametrize("raw, expected", [("2", 2), (" 1337 ", 1337), ("0", 0), ("+3", 3), ("-4", -4)])
def test_env_int_reads_plain_integers(monkeypatch, raw, expected):
    monkeypatch.setenv(NAME, raw)
    assert env_int(NAME) == expected


@pytest.mark.parametrize("raw", [None, "", "  "])
def test_env_int_unset_or_empty_gives_the_default(monkeypatch, raw):
    if raw is None:
        monkeypatch.delenv(NAME, raising=False)
    else:
        monkeypatch.setenv(NAME, raw)
    assert env_int(NAME) is None
    assert env_int(NAME, 7) == 7


@pytest.mark.parametrize("raw", ["2.0", "two", "1e3", "--2", "2-", "0x10", "٣", "1_000"])
def test_env_int_rejects_anything_else_naming_variable_and_value(monkeypatch, raw):
    monkeypatch.setenv(NAME, raw)
    with pytest.raises(ValueError) as err:
        env_int(NAME)
    assert NAME in str(err.value) and repr(raw) in str(err.value) and "integer" in str(err.value)


def test_env_int_minimum_and_bad_arguments(monkeypatch):
    monkeypatch.setenv(NAME, "0")
    with pytest.raises(ValueError, match=r"integer >= 1"):
        env_int(NAME, minimum=1)
    with pytest.raises(TypeError, match="variable name"):
        env_int("")
    with pytest.raises(TypeError, match="default"):
        env_int(NAME, default="3")
    with pytest.raises(TypeError, match="minimum"):
        env_int(NAME, minimum=1.0)


# ----------------------------------------------------------------------------- setup_chapter overrides


def test_setup_chapter_takes_seed_and_threads_from_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("SCRATCHLM_PROFILE", "smoke")
    monkeypatch.setenv("SCRATCHLM_DEVICE", "cpu")
    monkeypatch.setenv("SCRATCHLM_SEED", "2")
    monkeypatch.setenv("SCRATCHLM_THREADS", "2")
    before = torch.get_num_threads()
    try:
        ctx = scratchlm.setup_chapter("04")  # the chapter's own seed (1337) is replaced
        assert ctx.seed == 2
        assert torch.get_num_threads() == 2  # wins over smoke's single thread
        after = torch.rand(3).tolist()
        scratchlm.seed_everything(2)
        assert torch.rand(3).tolist() == after
        assert "seed=2" in capsys.readouterr().out
        monkeypatch.delenv("SCRATCHLM_SEED")
        monkeypatch.delenv("SCRATCHLM_THREADS")
        assert scratchlm.setup_chapter("04", seed=9, quiet=True).seed == 9
        assert torch.get_num_threads() == 1  # smoke's default again
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("var, raw, message", [("SCRATCHLM_SEED", "-1", ">= 0"), ("SCRATCHLM_SEED", "1.5", "integer"),
                                               ("SCRATCHLM_THREADS", "0", ">= 1"), ("SCRATCHLM_THREADS", "all", "integer")])
def test_setup_chapter_rejects_bad_overrides(monkeypatch, var, raw, message):
    monkeypatch.setenv("SCRATCHLM_PROFILE", "smoke")
    monkeypatch.setenv(var, raw)
    with pytest.raises(ValueError, match=message) as err:
        scratchlm.setup_chapter("01", quiet=True)
    assert var in str(err.value)


def test_setup_chapter_announces_a_dry_run(monkeypatch, capsys):
    monkeypatch.setenv("SCRATCHLM_PROFILE", "smoke")
    monkeypatch.setenv(MAX_STEPS_ENV, "2")
    before = torch.get_num_threads()
    try:
        scratchlm.setup_chapter("01")
    finally:
        torch.set_num_threads(before)
    assert f"DRY RUN: {MAX_STEPS_ENV}=2" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the step cap


def test_step_cap_capped_and_dry_run(monkeypatch):
    monkeypatch.delenv(MAX_STEPS_ENV, raising=False)
    assert step_cap() is None and not dry_run() and capped(500) == 500
    monkeypatch.setenv(MAX_STEPS_ENV, "2")
    assert step_cap() == 2 and dry_run()
    assert [capped(n) for n in (0, 1, 2, 500)] == [0, 1, 2, 2]
    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="loop length"):
            capped(bad)


@pytest.mark.parametrize("raw", ["0", "-2", "two", "2.0"])
def test_a_bad_step_cap_is_a_clear_error(monkeypatch, raw):
    monkeypatch.setenv(MAX_STEPS_ENV, raw)
    with pytest.raises(ValueError, match=MAX_STEPS_ENV):
        step_cap()
    with pytest.raises(ValueError, match=MAX_STEPS_ENV):
        capped(10)


def test_train_honours_the_step_cap(monkeypatch):
    config = cfg(max_steps=20, eval_every=5, eval_batches=4, grad_accum_steps=1)
    seen = []

    def get_batch(split, index):
        seen.append((split, index))
        return tiny_get_batch(split, index)

    monkeypatch.setenv(MAX_STEPS_ENV, "2")
    torch.manual_seed(0)
    history = train(TinyLM(), get_batch, tiny_loss, config)
    assert history.steps == [1, 2]
    assert history.eval_steps == [0, 2]  # at the start and after the last (capped) step
    assert max(i for s, i in seen if s == "val") == 1  # 2 of the 4 eval batches
    assert config.max_steps == 20 and config.eval_batches == 4  # the caller's config is untouched
    monkeypatch.delenv(MAX_STEPS_ENV)
    torch.manual_seed(0)
    assert train(TinyLM(), tiny_get_batch, tiny_loss, config).steps[-1] == 20  # no cap: the full run


def test_generate_honours_the_step_cap(monkeypatch):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=20, n_layers=1, n_heads=2, d_model=16))
    prompt = torch.tensor([[1, 2, 3]])
    monkeypatch.setenv(MAX_STEPS_ENV, "2")
    capped_out = generate(model, prompt, 10, greedy=True)
    assert capped_out.shape == (1, 3 + 2)
    monkeypatch.delenv(MAX_STEPS_ENV)
    full = generate(model, prompt, 10, greedy=True)
    assert full.shape == (1, 3 + 10) and torch.equal(full[:, :5], capped_out)
    monkeypatch.setenv(MAX_STEPS_ENV, "nope")
    with pytest.raises(ValueError, match=MAX_STEPS_ENV):
        generate(model, prompt, 10, greedy=True)


def test_static_generator_honours_the_step_cap(monkeypatch):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=20, n_layers=1, n_heads=2, d_model=16)).eval()
    gen = StaticGenerator(model, batch_size=2)
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    monkeypatch.delenv(MAX_STEPS_ENV, raising=False)
    full = gen.generate(prompt, 10)
    full_stream = list(gen.stream(prompt, 10))
    assert full.shape == (2, 3 + 10) and len(full_stream) == 10
    monkeypatch.setenv(MAX_STEPS_ENV, "2")
    capped_out = gen.generate(prompt, 10)
    assert torch.equal(capped_out, full[:, :5])  # the first 2 tokens of the full run, nothing more
    assert list(gen.stream(prompt, 10)) == full_stream[:2]
    assert torch.equal(capped_out, generate(model, prompt, 10, greedy=True))  # the same cap as generate
    with pytest.raises(ValueError, match="max_length"):  # too long for the cache: an error, capped or not
        gen.generate(prompt, 14)


def test_train_char_lm_caps_its_validation_batches(monkeypatch):
    ids = torch.tensor([(i * 5) % 11 for i in range(400)])
    data = {"train": ids[:300], "val": ids[300:]}
    monkeypatch.setenv(MAX_STEPS_ENV, "2")
    torch.manual_seed(0)
    model = CharLM(11, 16, 2, 1, 8)
    run = train_char_lm(model, data, steps=30, batch_size=4, learning_rate=1e-3, seed=3, eval_batches=6)
    assert run.history.steps == [1, 2]
    get_batch = make_lm_get_batch(data, batch_size=4, block_size=8, seed=3)  # the batches train_char_lm uses
    two = evaluate(model, get_batch, causal_lm_loss, "val", range(2))
    six = evaluate(model, get_batch, causal_lm_loss, "val", range(6))
    assert run.val_loss == pytest.approx(two, rel=1e-6) and two != pytest.approx(six, rel=1e-6)


# ----------------------------------------------------------------------------- glued checks


@pytest.fixture
def glued(monkeypatch):
    """Record what check_metric / report_training glue (outside a kernel they glue nothing)."""
    store: dict[str, object] = {}
    monkeypatch.setattr(checks, "_glue", lambda name, value: store.__setitem__(name, value))
    return store


def test_check_metric_passes_glues_and_reports_the_margin(glued, capsys, monkeypatch):
    monkeypatch.delenv(MAX_STEPS_ENV, raising=False)
    result = scratchlm.check_metric("val_loss", torch.tensor(1.80), "<", 2.0)
    assert result.passed and not result.skipped and result.margin == pytest.approx(0.2, abs=1e-6)
    assert glued == {"check_val_loss_value": pytest.approx(1.8), "check_val_loss_threshold": 2.0,
                     "check_val_loss_op": "<"}
    assert isinstance(glued["check_val_loss_value"], float)
    assert "check val_loss: 1.8 < 2 (margin +0.2) ok" in capsys.readouterr().out
    assert checks.margin(0.9, ">=", 0.8) == pytest.approx(0.1)


@pytest.mark.parametrize("value, op, threshold", [(2.1, "<", 2.0), (2.0, "<", 2.0), (0.4, ">=", 0.5),
                                                  (float("nan"), "<", 1.0), (float("nan"), ">", 1.0)])
def test_check_metric_fails_loudly(glued, monkeypatch, value, op, threshold):
    monkeypatch.delenv(MAX_STEPS_ENV, raising=False)
    with pytest.raises(AssertionError, match=r"check acc failed: .* is not " + op):
        scratchlm.check_metric("acc", value, op, threshold, quiet=True)
    assert "check_acc_value" in glued  # glued before failing: the robustness table still shows it


def test_check_metric_under_a_dry_run(glued, monkeypatch, capsys):
    monkeypatch.setenv(MAX_STEPS_ENV, "2")
    result = scratchlm.check_metric("acc", 0.5, ">", 0.8)  # a trained result: skipped, not asserted
    assert result.skipped and not result.passed
    assert glued["check_acc_skipped"] is True
    assert "skipped (dry run)" in capsys.readouterr().out
    with pytest.raises(AssertionError):  # a result any run must show is still asserted
        scratchlm.check_metric("acc", 0.5, ">", 0.8, needs_training=False)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(name="Val-Loss"), ValueError, "lower-case"), (dict(name="1x"), ValueError, "lower-case"),
    (dict(op="=="), ValueError, "op must be one of"), (dict(value="1.0"), TypeError, "real number"),
    (dict(value=True), TypeError, "real number"), (dict(threshold=float("inf")), ValueError, "finite"),
])
def test_check_metric_bad_arguments(glued, kwargs, error, message):
    args = dict(name="x", value=1.0, op="<", threshold=2.0) | kwargs
    with pytest.raises(error, match=message):
        scratchlm.check_metric(args["name"], args["value"], args["op"], args["threshold"])


def test_report_training_glues_params_and_tokens(glued, capsys):
    flops = scratchlm.report_training("char_lm", params=1000, tokens=50)
    assert flops == 6 * 1000 * 50
    assert glued == {"train_char_lm_params": 1000, "train_char_lm_tokens": 50}
    assert "6ND = 3e+05 FLOPs" in capsys.readouterr().out
    with pytest.raises(ValueError, match="params"):
        scratchlm.report_training("x", params=-1, tokens=1)
    with pytest.raises(ValueError, match="tokens"):
        scratchlm.report_training("x", params=1, tokens=2.0)
    with pytest.raises(ValueError, match="lower-case"):
        scratchlm.report_training("X", params=1, tokens=1)


def test_outside_a_kernel_nothing_is_glued(capsys):
    checks._glue("check_x_value", 1.0)  # plain pytest: no IPython kernel, no display output
    assert capsys.readouterr().out == ""
