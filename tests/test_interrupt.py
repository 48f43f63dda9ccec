"""Nothing lost: a training subprocess killed with SIGKILL at random moments, many times.

Each run trains a tiny model (Dropout, Adam, StepLR, evaluations every 3 steps and at each epoch end,
so checkpoints are written several times per epoch) with checkpoint_dir and resume=True. The test
kills it at a random moment (seeded), checks that the best and last checkpoints on disk load
(SHA-256 verified) and that the best never goes backwards, restarts it, and repeats; a run that ends
by itself must have produced exactly the weights, history and best checkpoint of an uninterrupted
run (resume is exact on cpu), which shows each resume continued from the checkpoint it found.

Default: 20 kills. @slow: 200. FASTCONV_KILLS overrides the default count.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fastconv import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 12

# The training subprocess: prints "ready" once imported, then fits; at the end writes the final weights
# and history. argv: checkpoint_dir, output directory.
WORKER = r"""
import json, os, sys
import numpy as np
import fastconv
from fastconv import losses, nn, optim, train
fastconv.set_backend("cpu")
ckpt, out = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
x = rng.standard_normal((48, 4)).astype(np.float32)
y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
model = nn.Sequential(nn.Linear(4, 8, seed=1), nn.ReLU(), nn.Dropout(0.2, seed=2), nn.Linear(8, 2, seed=3))
opt = optim.Adam(model.parameters(), lr=0.05)
sched = optim.StepLR(opt, step_size=4, gamma=0.5)
# Warm up (load the cached Numba kernels) before "ready", so that the kill window covers training.
warm = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))
train.fit(warm, losses.CrossEntropyLoss(), optim.Adam(warm.parameters()), (x[:8], y[:8]), (x[:4], y[:4]), epochs=1,
          batch_size=4, progress=False)
print("ready", flush=True)
history = train.fit(model, losses.CrossEntropyLoss(), opt, (x[:32], y[:32]), (x[32:], y[32:]), epochs=%d,
                    batch_size=4, metric="loss", eval_every=3, checkpoint_dir=ckpt, scheduler=sched, resume=True,
                    progress=False, seed=7)
np.savez(os.path.join(out, "final.npz"), **{k: np.asarray(v) for k, v in model.state_dict().items()})
records = [{k: v for k, v in r.items() if k != "time"} for r in history.records]
with open(os.path.join(out, "history.json"), "w") as f:
    json.dump({"records": records, "best_index": history.best_index}, f)
os._exit(0)  # skip the interpreter's teardown (thread pools): the run ends when its results are written
""" % EPOCHS


def _env():
    env = dict(os.environ, NUMBA_NUM_THREADS="1", FASTCONV_BACKEND="cpu", PYTHONPATH=ROOT)
    return env


def start(ckpt, out):
    os.makedirs(out, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(ckpt), str(out)], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.wait()
        raise AssertionError(f"worker did not start: {line!r} {proc.stderr.read()}")
    return proc


def finish(proc):
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return proc.returncode


def weights(directory):
    model, info = checkpoint.load(directory)  # raises CheckpointError on a bad checksum or a torn file
    return {k: np.asarray(v).copy() for k, v in model.state_dict().items()}, info


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: final weights, history, best checkpoint."""
    base = tmp_path_factory.mktemp("reference")
    proc = start(base / "ck", base / "out")
    t0 = time.perf_counter()
    finish(proc)
    duration = time.perf_counter() - t0
    final = dict(np.load(base / "out" / "final.npz"))
    history = json.loads((base / "out" / "history.json").read_text())
    best, info = weights(base / "ck" / "best")
    return final, history, best, info, duration


def kill_many(tmp_path, reference, kills, seed):
    """Kills `kills` times at random moments; returns (kill points tried, runs completed, kills that found
    no checkpoint yet)."""
    rng = np.random.default_rng(seed)
    ref_final, ref_history, ref_best, ref_info, duration = reference
    done_kills, runs, before_first = 0, 0, 0
    window = 0.5 * duration  # kill anywhere in [0, window) after the worker is ready
    steps_at_kill = []  # the step of the last checkpoint found after each kill: where the kills landed
    while done_kills < kills:
        runs += 1
        ckpt, out = tmp_path / f"run{runs}" / "ck", tmp_path / f"run{runs}" / "out"
        best_seen, kills_in_run = None, 0
        while True:
            proc = start(ckpt, out)
            # The window starts at half an uninterrupted fit's (measured) duration, so that a run survives
            # a few kills, each resumed from the checkpoint the previous one left, before it ends. The
            # measurement goes stale when the machine's load changes: the window shrinks when a run ends
            # before its kill, and grows when a run has survived six (then every kill had landed in the
            # first run, on a machine loaded by other processes: one run where the test wants several).
            time.sleep(rng.uniform(0.0, window))
            if proc.poll() is not None or done_kills >= kills:
                if done_kills < kills:
                    window *= 0.7
                finish(proc)
                break
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            done_kills += 1
            kills_in_run += 1
            if kills_in_run >= 6:
                window *= 1.25
            best_dir, last_dir = ckpt / "best", ckpt / "last"
            if not (best_dir / checkpoint.INDEX).exists():
                before_first += 1
                assert not (last_dir / checkpoint.INDEX).exists(), "a last checkpoint without a best one"
                continue
            _, info = weights(best_dir)  # the last best checkpoint loads, its checksum verified
            # fit writes best before last: a kill between the two first saves leaves no last yet, and a
            # resume refuses such a directory (a best it could not continue: _keep_best_without_last),
            # so the restart begins from scratch, as overwrite=True would, and must still end exactly
            # as the reference.
            if not (last_dir / checkpoint.INDEX).exists():
                shutil.rmtree(ckpt)
                best_seen = None
                continue
            _, last = weights(last_dir)
            steps_at_kill.append(last["extra"]["fit"]["state"]["step"])
            if best_seen is not None:
                assert info["metric"] <= best_seen, "the best checkpoint went backwards"
            best_seen = info["metric"]
        # The run finished: it must equal the uninterrupted one bit for bit.
        final = dict(np.load(out / "final.npz"))
        assert final.keys() == ref_final.keys()
        for k in final:
            assert final[k].tobytes() == ref_final[k].tobytes(), f"run {runs}: {k} differs from the uninterrupted run"
        history = json.loads((out / "history.json").read_text())
        assert history == ref_history, f"run {runs}: the history differs from the uninterrupted run"
        best, info = weights(ckpt / "best")
        assert info["epoch"] == ref_info["epoch"] and info["metric"] == ref_info["metric"]
        for k in best:
            assert best[k].tobytes() == ref_best[k].tobytes()
    print(f"\nlast checkpoint's step after each kill: {steps_at_kill}")
    return done_kills, runs, before_first


def test_kill_at_random_moments(tmp_path, reference):
    kills = int(os.environ.get("FASTCONV_KILLS", "20"))
    tried, runs, before_first = kill_many(tmp_path, reference, kills, seed=2026)
    print(f"\n{tried} kill points in {runs} runs ({before_first} before the first checkpoint)")
    assert tried == kills and runs >= 2


@pytest.mark.slow
def test_kill_at_random_moments_many_times(tmp_path, reference):
    tried, runs, before_first = kill_many(tmp_path, reference, 200, seed=11)
    print(f"\n{tried} kill points in {runs} runs ({before_first} before the first checkpoint)")
    assert tried == 200


# ---- corruption sweep: every sampled single-bit flip, in either file, is refused ---------------------

def _flip_sweep(tmp_path, which, positions):
    from fastconv import nn, optim
    from helpers import to_numpy

    def make(seed):
        return nn.Sequential(nn.Linear(4, 8, seed=seed), nn.ReLU(), nn.Dropout(0.2, seed=seed), nn.Linear(8, 2, seed=seed))

    src = make(1)
    opt = optim.Adam(src.parameters(), lr=0.01)
    directory = tmp_path / "ck"
    checkpoint.save(directory, src, optimizer=opt, epoch=3, metric=0.25, extra={"note": "kept"})
    info = json.loads((directory / checkpoint.INDEX).read_text())
    target = directory / (info["weights"]["file"] if which == "weights" else checkpoint.INDEX)
    original = target.read_bytes()
    rng = np.random.default_rng(5)
    model = make(2)
    model_opt = optim.Adam(model.parameters(), lr=0.5)
    before = [to_numpy(p.data).copy() for p in model.parameters()]
    refused = 0
    for pos in rng.choice(len(original), size=min(positions, len(original)), replace=False):
        data = bytearray(original)
        data[pos] ^= 1 << int(rng.integers(8))
        target.write_bytes(bytes(data))
        with pytest.raises(checkpoint.CheckpointError):
            checkpoint.load_into(directory, model, model_opt)
        refused += 1
        for b, p in zip(before, model.parameters()):
            assert to_numpy(p.data).tobytes() == b.tobytes(), f"a refused load changed the model (flip at {pos})"
        assert model_opt.lr == 0.5 and not model_opt.state
    target.write_bytes(original)
    checkpoint.load_into(directory, model, model_opt)  # the intact checkpoint still loads
    return refused


def test_every_bit_flip_in_the_weights_is_refused(tmp_path):
    assert _flip_sweep(tmp_path, "weights", 150) == 150


def test_every_bit_flip_in_the_index_is_refused(tmp_path):
    # checkpoint.json carries the epoch, metric, optimizer hyperparameters and the training loop's
    # state: a flipped digit there would otherwise resume silently from wrong values.
    assert _flip_sweep(tmp_path, "index", 150) == 150
