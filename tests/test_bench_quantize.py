"""The quantization benchmark command runs and prints every method (no timing assertions: timings are
the benchmark's output)."""

import pytest

from scratchlm.bench.quantize import METHODS, benchmark_quantize, main


def test_short_run_prints_every_method(capsys):
    rows = main(["--d", "128", "--d-ff", "256", "--batch", "1", "3", "--threads", "1", "--warmup", "1",
                 "--repeats", "2"])
    out = capsys.readouterr().out
    for method in METHODS:
        if method.startswith("torchao") and "torchao not installed" in out:
            continue
        assert method in out, method
    for text in ("linear 128->128", "linear 128->256", "mlp 128->256->128", "batch 3", "KiB", "vs fp32"):
        assert text in out, text
    assert all(r["ms"] > 0 and r["size_kib"] > 0 for r in rows)
    fp32 = [r for r in rows if r["method"] == "fp32"]
    assert all(r["err"] == 0 for r in fp32)
    assert all(r["err"] < 0.2 for r in rows)


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiples of 128"):
        benchmark_quantize(d=100)
    with pytest.raises(ValueError, match="repeats"):
        benchmark_quantize(d=128, d_ff=256, repeats=0)
