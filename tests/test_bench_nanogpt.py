"""run_nanogpt against a fake nanoGPT checkout that prints nanoGPT's log lines (no network, no nanoGPT)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from fake_nanogpt import make_fake_nanogpt

from scratchlm.bench.nanogpt import (
    README_ARGS,
    NanoGPTError,
    NanoGPTTimeoutError,
    check_nanogpt_dir,
    nanogpt_command,
    parse_log,
    run_nanogpt,
)


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    return make_fake_nanogpt(tmp_path / "nanoGPT")


@pytest.fixture
def text(tmp_path: Path) -> Path:
    path = tmp_path / "input.txt"
    path.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    return path


def _argv(result) -> list[str]:
    line = next(line for line in result.stdout.splitlines() if line.startswith("ARGV "))
    return json.loads(line[len("ARGV "):])


def test_parse_log_reads_nanogpt_lines():
    out = "\n".join([
        "tokens per iteration will be: 768",
        "step 0: train loss 4.2874, val loss 4.2823",
        "iter 0: loss 4.2654, time 1234.56ms, mfu -100.00%",
        "iter 1: loss 3.9000, time 45.10ms, mfu -100.00%",
        "saving checkpoint to out-shakespeare-char",
        "step 2: train loss 2.5000, val loss 2.6000",
        "iter 2: loss 2.4000, time 99.00ms, mfu 1.20%",
    ])
    log = parse_log(out)
    assert log.iters == [0, 1, 2] and log.losses == [4.2654, 3.9, 2.4] and log.iter_ms == [1234.56, 45.1, 99.0]
    assert log.eval_steps == [0, 2] and log.eval_train_loss == [4.2874, 2.5] and log.eval_val_loss == [4.2823, 2.6]
    assert log.tokens_per_iter == 768
    assert parse_log("tokens per iteration will be: 1,024").tokens_per_iter == 1024


def test_command_substitutes_iterations_and_device():
    cmd = nanogpt_command(50, device="cuda", extra_args=("--eval_interval=10",), python="py")
    assert cmd[:3] == ["py", "-u", "train.py"]
    args = cmd[3:]
    assert "--max_iters=50" in args and "--lr_decay_iters=50" in args and "--device=cuda" in args
    assert "--max_iters=2000" not in args and "--lr_decay_iters=2000" not in args
    assert args[-1] == "--eval_interval=10"
    unchanged = [a for a in README_ARGS if not a.startswith(("--max_iters", "--lr_decay_iters", "--device"))]
    assert [a for a in args if a in unchanged] == unchanged  # the rest of the README command, in order


def test_run_with_local_input(fake, text):
    result = run_nanogpt(fake, max_iters=6, threads=2, input_text=text, extra_args=("--eval_interval=3",),
                         timeout=60)
    data = fake / "data" / "shakespeare_char"
    assert (data / "input.txt").read_text() == text.read_text()  # copied, so prepare.py did not download
    assert (data / "train.bin").is_file() and result.prepare_seconds is not None
    argv = _argv(result)
    assert argv[0] == "config/train_shakespeare_char.py" and "--max_iters=6" in argv and "--lr_decay_iters=6" in argv
    assert "THREADS 2" in result.stdout
    assert result.log.iters == list(range(7))  # iterations 0..max_iters
    assert result.log.eval_steps == [0, 3, 6]
    assert result.final_val_loss == pytest.approx(4.3 - 0.06) and result.final_train_loss == pytest.approx(4.2 - 0.06)
    assert result.log.tokens_per_iter == 12 * 64
    times = [50 + i if i % 3 == 0 else 10 + i for i in range(7)]
    assert result.loop_seconds == pytest.approx(sum(times) / 1000)
    assert result.ms_per_iter == pytest.approx((11 + 12 + 14 + 15) / 4)  # iterations without an evaluation
    assert result.tokens_per_second == pytest.approx(768 / (result.ms_per_iter / 1000))
    assert result.wall_seconds > 0 and result.loop_seconds_observed is not None
    assert 0 <= result.loop_seconds_observed <= result.wall_seconds
    assert "ms/iter" in result.summary()

    again = run_nanogpt(fake, max_iters=2, input_text=text)  # prepared data are reused
    assert again.prepare_seconds is None and again.log.iters == [0, 1, 2]


def test_threads_unset_by_default(fake, text, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    result = run_nanogpt(fake, max_iters=1, input_text=text)
    assert "THREADS unset" in result.stdout
    assert result.log.eval_steps == [0]


def test_different_existing_input_is_not_overwritten(fake, text, tmp_path):
    (fake / "data" / "shakespeare_char" / "input.txt").write_text("some other text\n")
    with pytest.raises(ValueError, match="differs"):
        run_nanogpt(fake, max_iters=1, input_text=text)
    with pytest.raises(ValueError, match="not a file"):
        run_nanogpt(fake, max_iters=1, input_text=tmp_path / "missing.txt")


def test_download_failure_is_reported(fake):
    with pytest.raises(NanoGPTError, match=r"prepare.py failed(?s:.*)input_text=(?s:.*)no network"):
        run_nanogpt(fake, max_iters=1)


def test_not_a_checkout(tmp_path, fake):
    with pytest.raises(ValueError, match="not a directory"):
        run_nanogpt(tmp_path / "nowhere", max_iters=1)
    (fake / "model.py").unlink()
    (fake / "configurator.py").unlink()
    with pytest.raises(ValueError, match="not a nanoGPT checkout: missing model.py, configurator.py"):
        check_nanogpt_dir(fake)


def test_failing_train_shows_stderr(fake, text):
    with pytest.raises(NanoGPTError, match=r"exit code 3(?s:.*)RuntimeError: boom"):
        run_nanogpt(fake, max_iters=1, input_text=text, extra_args=("--fail=1",))


def test_timeout_kills_the_process(fake, text):
    with pytest.raises(NanoGPTTimeoutError, match="longer than 0.5 s"):
        run_nanogpt(fake, max_iters=1, input_text=text, extra_args=("--sleep=30",), timeout=0.5)


def test_no_iteration_lines(fake, text):
    (fake / "train.py").write_text("print('hello')\n")
    with pytest.raises(NanoGPTError, match="no 'iter N"):
        run_nanogpt(fake, max_iters=1, input_text=text)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"max_iters": -1}, ValueError, "max_iters"),
    ({"max_iters": 1.5}, ValueError, "max_iters"),
    ({"max_iters": 1, "threads": 0}, ValueError, "threads"),
    ({"max_iters": 1, "extra_args": ("eval_interval=3",)}, ValueError, "--key=value"),
    ({"max_iters": 1, "extra_args": "--eval_interval=3"}, TypeError, "sequence"),
    ({"max_iters": 1, "timeout": 0}, ValueError, "timeout"),
    ({"max_iters": 1, "device": ""}, ValueError, "device"),
])
def test_bad_arguments(fake, kwargs, error, match):
    with pytest.raises(error, match=match):
        run_nanogpt(fake, **kwargs)


def test_python_is_configurable(fake, text):
    result = run_nanogpt(fake, max_iters=0, input_text=text, python=sys.executable)
    assert result.command[0] == sys.executable and result.log.iters == [0]
