"""A fake nanoGPT checkout that prints nanoGPT's log lines (no network, no nanoGPT); shared by the bench tests."""

from __future__ import annotations

from pathlib import Path

# The lines below are in the exact format of nanoGPT's train.py (f-strings with :.4f, :.2f, :,).
FAKE_TRAIN = r'''
import json, os, sys, time
args = dict(a[2:].split("=", 1) for a in sys.argv[2:])
print(f"Overriding config with {sys.argv[1]}:")
print(f"tokens per iteration will be: {int(args['batch_size']) * int(args['block_size']):,}")
print("ARGV " + json.dumps(sys.argv[1:]))
print("THREADS " + os.environ.get("OMP_NUM_THREADS", "unset"))
if not os.path.exists(os.path.join("data", "shakespeare_char", "train.bin")):
    sys.exit("train.bin missing")
time.sleep(float(args.get("sleep", 0)))
if "fail" in args:
    print("Traceback (most recent call last):\nRuntimeError: boom", file=sys.stderr)
    sys.exit(3)
print("Initializing a new model from scratch")
print("using fused AdamW: False")
eval_interval = int(args.get("eval_interval", 250))
for it in range(int(args["max_iters"]) + 1):
    if it % eval_interval == 0:
        print(f"step {it}: train loss {4.2 - it / 100:.4f}, val loss {4.3 - it / 100:.4f}")
    mfu = -100.0 if it < 5 else 1.25
    print(f"iter {it}: loss {4.1 - it / 100:.4f}, time {(50 if it % eval_interval == 0 else 10) + it:.2f}ms, mfu {mfu:.2f}%")
'''

FAKE_PREPARE = r'''
import os, sys
here = os.path.dirname(__file__)
path = os.path.join(here, "input.txt")
if not os.path.exists(path):
    sys.exit("requests.exceptions.ConnectionError: no network in this test")
with open(path) as f:
    data = f.read()
print(f"length of dataset in characters: {len(data):,}")
for name in ("train.bin", "val.bin", "meta.pkl"):
    with open(os.path.join(here, name), "wb") as f:
        f.write(data.encode())
'''




def make_fake_nanogpt(root: Path) -> Path:
    """Write the fake checkout (train.py, model.py, configurator.py, config, prepare.py) under ``root``."""
    (root / "config").mkdir(parents=True)
    (root / "data" / "shakespeare_char").mkdir(parents=True)
    (root / "train.py").write_text(FAKE_TRAIN)
    (root / "model.py").write_text("# GPT model\n")
    (root / "configurator.py").write_text("# poor man's configurator\n")
    (root / "config" / "train_shakespeare_char.py").write_text("eval_interval = 250\n")
    (root / "data" / "shakespeare_char" / "prepare.py").write_text(FAKE_PREPARE)
    return root
