"""fastconv.checkpoint: save/load gives identical outputs, optimizer state round trips, corrupt /
truncated / other-architecture checkpoints are clear errors that change nothing, and a crash at any
point of a save leaves the previous checkpoint loadable."""
import json
import os
import threading

import numpy as np
import pytest

from fastconv import checkpoint, losses, nn, ops, optim, train
from fastconv.checkpoint import CheckpointError
from helpers import on, to_numpy


def model_and_input(seed=0):
    model = nn.Sequential(nn.Linear(6, 5, seed=seed), nn.ReLU(), nn.Dropout(0.2, seed=seed),
                          nn.Linear(5, 3, seed=seed + 1))
    x = np.random.default_rng(seed).standard_normal((4, 6)).astype(np.float32)
    return model, x


def outputs(model, x):
    model.eval()
    return to_numpy(model(x)).copy()


def test_save_load_gives_identical_outputs(backend, tmp_path):
    model, x = model_and_input()
    x = on(backend, x)
    path = checkpoint.save(tmp_path / "best", model, epoch=3, metric=0.25, extra={"note": "hi"})
    assert os.path.basename(path) == "checkpoint.json"
    loaded, info = checkpoint.load(tmp_path / "best")
    np.testing.assert_array_equal(outputs(loaded, x), outputs(model, x))
    assert info["epoch"] == 3 and info["metric"] == 0.25 and info["extra"] == {"note": "hi"}
    assert info["fastconv_version"] and info["config"] == model.config()
    # Also by the JSON's path, and readable by safetensors itself.
    loaded2, _ = checkpoint.load(path)
    np.testing.assert_array_equal(outputs(loaded2, x), outputs(model, x))
    from safetensors.numpy import load_file
    tensors = load_file(str(tmp_path / "best" / info["weights"]["file"]))
    np.testing.assert_array_equal(tensors["3.weight"], to_numpy(model[3].weight.data))


def test_a_model_whose_config_no_longer_describes_it_is_refused_before_writing(tmp_path):
    # A registered custom model whose head was replaced after construction (fine-tuning) saved fine and then
    # never loaded ("the weights do not fit its own config"); fit's best/ and last/ likewise.
    @nn.register
    class HeadNet(nn.Module):
        def __init__(self, classes=3):
            self.body, self.head = nn.Linear(4, 6, seed=0), nn.Linear(6, classes, seed=1)

        def _args(self):
            return {"classes": self.head.weight.data.shape[0]}  # (what rebuilds it as it is now)

        def forward(self, x):
            return self.head(self.body(x))

        def backward(self, dy):
            return self.body.backward(self.head.backward(dy))

    class StaleHeadNet(HeadNet):
        def _args(self):
            return {"classes": 3}  # (the class count it was built with, whatever the head is now)

    nn.register(StaleHeadNet)
    stale = StaleHeadNet()
    checkpoint.save(tmp_path / "ok", stale, epoch=0)
    stale.head = nn.Linear(6, 2, seed=2)
    with pytest.raises(ValueError, match=r"checkpoint.save: model.config\(\) does not describe this model: its parameter "
                                         r"head.weight is \(2, 6\) float32, but \(3, 6\) float32 in the model the "
                                         r"config rebuilds; a checkpoint of it would not load"):
        checkpoint.save(tmp_path / "stale", stale, epoch=0)
    assert not (tmp_path / "stale").exists()
    with pytest.raises(ValueError, match=r"^fit: checkpoint_dir: model.config\(\) does not describe this model"):
        train.fit(stale, losses.CrossEntropyLoss(), optim.SGD(stale.parameters(), lr=0.1),
                  (np.zeros((4, 4), np.float32), np.zeros(4, np.int64)), epochs=1, batch_size=2,
                  checkpoint_dir=tmp_path / "fit", progress=False)
    # and the other way: a parameter the config's model has and this one lacks (a bias deleted behind the layer)
    lacking = nn.Sequential(nn.Conv2d(2, 4, 3))
    del lacking[0]._parameters["bias"]
    with pytest.raises(ValueError, match=r"the model the config rebuilds has parameters \['0.bias'\] which this model "
                                         r"lacks"):
        checkpoint.save(tmp_path / "lacking", lacking, epoch=0)
    fresh = HeadNet()  # a config that follows the head: saved, and loads
    fresh.head = nn.Linear(6, 2, seed=2)
    checkpoint.save(tmp_path / "fresh", fresh, epoch=0)
    loaded, _ = checkpoint.load(tmp_path / "fresh")
    assert loaded.head.weight.data.shape == (2, 6)


def test_the_same_model_saves_the_same_weights_file(tmp_path):
    # safetensors orders its metadata keys by a Rust HashMap, differently from save to save: with two keys
    # the same weights made two files (and two sha256s in run.json) half the time.
    model, _ = model_and_input()
    digests = set()
    for i in range(12):
        checkpoint.save(tmp_path / f"c{i}", model, epoch=1)
        digests.add(json.loads((tmp_path / f"c{i}" / "checkpoint.json").read_text())["weights"]["sha256"])
    assert len(digests) == 1


@pytest.mark.skipif(not hasattr(ops, "adam_step"), reason="ops not merged yet: adam_step")
def test_optimizer_and_scheduler_state_round_trip(tmp_path):
    model, x = model_and_input()
    opt = optim.Adam(model.parameters(), lr=0.1)
    sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    for p in model.parameters():
        p.grad = np.ones(p.shape, np.float32)
    opt.step()
    sched.step()
    checkpoint.save(tmp_path / "ck", model, optimizer=opt, scheduler=sched, epoch=1)

    model2, _ = model_and_input(seed=5)
    opt2 = optim.Adam(model2.parameters(), lr=0.7)
    sched2 = optim.StepLR(opt2, step_size=1, gamma=0.5)
    checkpoint.load_into(tmp_path / "ck", model2, opt2, sched2)
    assert opt2.lr == opt.lr == 0.05 and sched2.last_epoch == 1
    for i, s in opt.state.items():
        assert opt2.state[i]["step"] == s["step"] == 1
        np.testing.assert_array_equal(to_numpy(opt2.state[i]["exp_avg_sq"]), to_numpy(s["exp_avg_sq"]))
    np.testing.assert_array_equal(outputs(model2, x), outputs(model, x))


def test_corrupt_or_truncated_weights_are_clear_errors(tmp_path):
    model, x = model_and_input()
    checkpoint.save(tmp_path / "ck", model, epoch=1)
    info = checkpoint.read_info(tmp_path / "ck")
    weights = tmp_path / "ck" / info["weights"]["file"]
    data = weights.read_bytes()
    target, target_x = model_and_input(seed=9)
    before = outputs(target, target_x)

    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        checkpoint.load(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="truncated"):
        checkpoint.load_into(tmp_path / "ck", target)

    flipped = bytearray(data)
    flipped[-3] ^= 0xFF
    weights.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="SHA-256"):
        checkpoint.load_into(tmp_path / "ck", target)
    np.testing.assert_array_equal(outputs(target, target_x), before)

    weights.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        checkpoint.load(tmp_path / "ck")
    (tmp_path / "ck" / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        checkpoint.load(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        checkpoint.load(tmp_path / "nowhere")


def test_other_architecture_is_a_clear_error(tmp_path):
    model, _ = model_and_input()
    checkpoint.save(tmp_path / "ck", model, epoch=1)
    wider = nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Dropout(0.2), nn.Linear(7, 3))
    before = [to_numpy(p.data).copy() for p in wider.parameters()]
    with pytest.raises(CheckpointError, match=r"another architecture.*out_features: 5 in the checkpoint, 7"):
        checkpoint.load_into(tmp_path / "ck", wider)
    with pytest.raises(CheckpointError, match="does not fit the model.*shape"):
        checkpoint.load_into(tmp_path / "ck", wider, strict=False)
    for b, p in zip(before, wider.parameters()):
        np.testing.assert_array_equal(to_numpy(p.data), b)
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        checkpoint.load_into(tmp_path / "ck", model, opt)


def test_fine_tuning_loads_matching_layers_into_a_new_head(tmp_path):
    model, x = model_and_input()
    checkpoint.save(tmp_path / "ck", model, epoch=1)
    new = nn.Sequential(nn.Linear(6, 5, seed=3), nn.ReLU(), nn.Dropout(0.2), nn.Linear(5, 3, seed=4),
                        nn.ReLU(), nn.Linear(3, 2))
    info = checkpoint.load_into(tmp_path / "ck", new, strict=False)
    np.testing.assert_array_equal(to_numpy(new[0].weight.data), to_numpy(model[0].weight.data))
    assert info["missing_keys"] == ["5.weight", "5.bias"] and info["unexpected_keys"] == []
    assert info["epoch"] == 1
    new[0].freeze()
    assert new[0].weight.frozen and not new[5].weight.frozen


def test_a_loose_load_that_matches_no_name_or_moves_the_optimizer_state_is_refused(tmp_path):
    # strict=False into the same layers behind a Flatten (names 1.*, 4.* for 0.*, 3.*) loaded no weight
    # and said nothing, and put the optimizer's state on parameters by position.
    model, x = model_and_input()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.zero_grad()
    model.backward(np.ones_like(model(x)))
    opt.step()
    checkpoint.save(tmp_path / "ck", model, optimizer=opt, epoch=1)
    shifted = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Dropout(0.2), nn.Linear(5, 3))
    before = [to_numpy(p.data).copy() for p in shifted.parameters()]
    with pytest.raises(CheckpointError, match=r"no parameter of the checkpoint .* has the name of one of the "
                                              r"model's \(the model's \['1.weight', .*nothing to load"):
        checkpoint.load_into(tmp_path / "ck", shifted, strict=False)
    headed = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Dropout(0.2), nn.Linear(5, 3), nn.ReLU(),
                           nn.Linear(3, 2))  # a new head
    new_opt = optim.SGD(headed.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(CheckpointError, match=r"optimizer state in .* is kept by parameter position"):
        checkpoint.load_into(tmp_path / "ck", headed, new_opt, strict=False)
    for b, p in zip(before, shifted.parameters()):
        np.testing.assert_array_equal(to_numpy(p.data), b)
    assert new_opt.state == {}
    same = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Dropout(0.2), nn.Linear(5, 3))
    same_opt = optim.SGD(same.parameters(), lr=0.1, momentum=0.9)
    info = checkpoint.load_into(tmp_path / "ck", same, same_opt, strict=False)  # (all names: the state goes)
    assert info["missing_keys"] == info["unexpected_keys"] == [] and sorted(same_opt.state) == [0, 1, 2, 3]


def stages():
    """The calls a save makes that a crash could interrupt (first, second, ... occurrence)."""
    # weights file, directory, JSON file, directory, directory after the cleanup
    return [("fsync", k) for k in range(5)] + [("replace", k) for k in range(2)] + [("unlink", 0)]


@pytest.mark.parametrize("call, occurrence", stages())
def test_crash_at_any_point_of_a_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch, call, occurrence):
    old, x = model_and_input(seed=0)
    checkpoint.save(tmp_path / "best", old, epoch=1, metric=0.5)
    expected_old = outputs(old, x)
    new, _ = model_and_input(seed=1)
    expected_new = outputs(new, x)

    class Crash(Exception):
        pass

    real = getattr(os, call)
    count = {"n": 0}

    def crashing(*args, **kwargs):
        if count["n"] == occurrence:
            raise Crash(f"simulated crash in os.{call} #{occurrence}")
        count["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(os, call, crashing)
    try:
        checkpoint.save(tmp_path / "best", new, epoch=2, metric=0.4)
        crashed = False
    except Crash:
        crashed = True
    monkeypatch.undo()
    assert crashed
    loaded, info = checkpoint.load(tmp_path / "best")
    got = outputs(loaded, x)
    # Either the old checkpoint, complete, or (a crash after the commit point) the new one.
    if info["epoch"] == 1:
        np.testing.assert_array_equal(got, expected_old)
    else:
        np.testing.assert_array_equal(got, expected_new)
    # The next save cleans up whatever the crash left behind.
    checkpoint.save(tmp_path / "best", new, epoch=3)
    files = sorted(os.listdir(tmp_path / "best"))
    assert len(files) == 2 and "checkpoint.json" in files, files


def test_json_names_checksum_and_parameters(tmp_path):
    model, _ = model_and_input()
    checkpoint.save(tmp_path / "ck", model, epoch=0)
    info = json.loads((tmp_path / "ck" / "checkpoint.json").read_text())
    assert info["parameters"] == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert len(info["weights"]["sha256"]) == 64
    assert "2" in info["module_state"]  # the Dropout generator, for exact resume


def test_extra_is_saved_in_its_json_form_and_unsavable_values_write_nothing(tmp_path):
    model, x = model_and_input()
    # Int keys read back as strings; the checksum is over that form, so the reload passes its check.
    checkpoint.save(tmp_path / "ck", model, epoch=np.int64(2),
                    extra={"per_class": {9: 0.5, 10: 0.7}, "mixed": {1: 2, "a": 3}})
    loaded, info = checkpoint.load(tmp_path / "ck")
    assert info["extra"] == {"per_class": {"9": 0.5, "10": 0.7}, "mixed": {"1": 2, "a": 3}} and info["epoch"] == 2
    np.testing.assert_array_equal(outputs(loaded, x), outputs(model, x))

    # Not JSON: an error before any file is written, in a new directory or over an existing checkpoint.
    with pytest.raises(TypeError, match="extra must be JSON-serializable.*int64"):
        checkpoint.save(tmp_path / "new", model, epoch=1, extra={"n": np.int64(3)})
    assert not (tmp_path / "new").exists()
    before = sorted(os.listdir(tmp_path / "ck"))
    with pytest.raises(TypeError, match="extra must be JSON-serializable.*object"):
        checkpoint.save(tmp_path / "ck", model, epoch=3, extra={"model": object()})
    assert sorted(os.listdir(tmp_path / "ck")) == before and checkpoint.read_info(tmp_path / "ck")["epoch"] == 2


def test_a_file_is_not_a_checkpoint_directory(tmp_path):
    model, _ = model_and_input()
    (tmp_path / "afile").write_text("hi")
    for call in (lambda: checkpoint.save(tmp_path / "afile", model, epoch=1),
                 lambda: checkpoint.load(tmp_path / "afile"),
                 lambda: checkpoint.load_into(tmp_path / "afile", model),
                 lambda: checkpoint.read_info(tmp_path / "afile")):
        with pytest.raises(CheckpointError, match="afile' is a file, not a checkpoint directory"):
            call()
    assert (tmp_path / "afile").read_text() == "hi"


@pytest.mark.parametrize("edit, match", [
    (lambda info: info.pop("weights"), "lacks weights"),
    (lambda info: info.pop("config"), "lacks config"),
    (lambda info: info["weights"].pop("sha256"), "lacks weights.file, weights.sha256 or weights.bytes"),
    (lambda info: info.__setitem__("format_version", "2"), "format_version '2', not an integer"),
])
def test_a_re_signed_json_missing_fields_is_a_clear_error(tmp_path, edit, match):
    # Edited by hand and given a matching checksum: the checksum passes, the content is still unusable.
    model, _ = model_and_input()
    checkpoint.save(tmp_path / "ck", model, epoch=1)
    path = tmp_path / "ck" / "checkpoint.json"
    info = json.loads(path.read_text())
    edit(info)
    info["index_sha256"] = checkpoint._index_digest(info)
    path.write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=match):
        checkpoint.load(tmp_path / "ck")
    with pytest.raises(CheckpointError, match=match):
        checkpoint.load_into(tmp_path / "ck", model)


def tied_model():
    """Linear layers whose weights are one Parameter (tied by assignment), with a head of their own."""
    first, second = nn.Linear(4, 4, seed=0), nn.Linear(4, 4, seed=1)
    second.weight = first.weight
    return nn.Sequential(first, nn.ReLU(), second, nn.ReLU(), nn.Linear(4, 2, seed=2))


@pytest.mark.skipif(not hasattr(ops, "adam_step"), reason="ops not merged yet: adam_step")
def test_tied_weights_stay_tied_through_a_checkpoint(tmp_path):
    model = tied_model()
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    opt = optim.Adam(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = np.ones(p.shape, np.float32)
    opt.step()
    checkpoint.save(tmp_path / "ck", model, optimizer=opt, epoch=1)
    loaded, info = checkpoint.load(tmp_path / "ck")
    assert info["tied"] == [["0.weight", "2.weight"]]
    params = dict(loaded.named_parameters())
    assert params["0.weight"] is params["2.weight"] and len(loaded.parameters()) == len(model.parameters()) == 5
    np.testing.assert_array_equal(outputs(loaded, x), outputs(model, x))
    opt2 = optim.Adam(loaded.parameters(), lr=0.1)  # the saved state fits: one buffer set per tied weight
    checkpoint.load_into(tmp_path / "ck", loaded, opt2)
    # The tie is part of the architecture: an untied model of the same layers is another one.
    untied = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    before = [to_numpy(p.data).copy() for p in untied.parameters()]
    with pytest.raises(CheckpointError, match=r"another architecture.*tied parameters: \[\['0.weight', '2.weight'\]\] "
                                              r"in the checkpoint, \[\] in the model"):
        checkpoint.load_into(tmp_path / "ck", untied)
    assert all(np.array_equal(to_numpy(p.data), b) for p, b in zip(untied.parameters(), before))
    checkpoint.load_into(tmp_path / "ck", untied, strict=False)  # fine-tuning's loose load takes the values
    np.testing.assert_array_equal(outputs(untied, x), outputs(model, x))


def test_frozen_parameters_stay_frozen_through_a_checkpoint(tmp_path):
    model, x = model_and_input()
    model[0].freeze()
    checkpoint.save(tmp_path / "ck", model, epoch=1)
    loaded, info = checkpoint.load(tmp_path / "ck")
    assert info["frozen"] == ["0.weight", "0.bias"]
    assert [p.frozen for p in loaded.parameters()] == [p.frozen for p in model.parameters()] == [True, True, False, False]
    np.testing.assert_array_equal(outputs(loaded, x), outputs(model, x))
    info = json.loads((tmp_path / "ck" / "checkpoint.json").read_text())
    info["frozen"] = ["0.weight", "7.bias"]  # a name the model lacks, re-signed
    info["index_sha256"] = checkpoint._index_digest(info)
    (tmp_path / "ck" / "checkpoint.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=r"lists \['0.weight', '7.bias'\] as its frozen parameters"):
        checkpoint.load(tmp_path / "ck")


def test_a_model_saved_in_eval_mode_loads_in_eval_mode(tmp_path):
    # load rebuilt every layer in training mode: a model saved after eval() and called directly once
    # loaded (not through train.predict) ran its Dropout, and its outputs differed from the saved one's.
    model, x = model_and_input()
    model.eval()
    checkpoint.save(tmp_path / "ck", model, epoch=1)
    loaded, info = checkpoint.load(tmp_path / "ck")
    assert info["eval_modules"] == ["", "0", "1", "2", "3"]
    assert not any(m.training for m in loaded.modules())
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))

    model.train()
    model[2].eval()  # one layer's own mode, the rest training: each comes back as it was
    checkpoint.save(tmp_path / "ck", model, epoch=2)
    loaded, info = checkpoint.load(tmp_path / "ck")
    assert info["eval_modules"] == ["2"]
    assert [m.training for m in loaded.modules()] == [m.training for m in model.modules()] == [True, True, True, False,
                                                                                               True]
    checkpoint.load_into(tmp_path / "ck", model.train())  # load_into leaves the modes alone (torch's load_state_dict)
    assert all(m.training for m in model.modules())

    info = json.loads((tmp_path / "ck" / "checkpoint.json").read_text())
    for bad in (["4"], "2", [2]):  # a module the model lacks, not a list, not names; re-signed
        info["eval_modules"] = bad
        info["index_sha256"] = checkpoint._index_digest(info)
        (tmp_path / "ck" / "checkpoint.json").write_text(json.dumps(info))
        with pytest.raises(CheckpointError, match=r"as its modules in eval mode, which are not modules of its model"):
            checkpoint.load(tmp_path / "ck")
    del info["eval_modules"]  # a checkpoint from before modes were saved: every module training, as then
    info["index_sha256"] = checkpoint._index_digest(info)
    (tmp_path / "ck" / "checkpoint.json").write_text(json.dumps(info))
    assert all(m.training for m in checkpoint.load(tmp_path / "ck")[0].modules())


class _ModeAware(nn.Module):
    """A layer whose train() does more than set the flag (a subclass's own mode switch)."""

    def __init__(self):
        self.fast = False

    def _args(self):
        return {}

    def forward(self, x):
        return x

    def backward(self, dy):
        return dy

    def train(self, mode=True):
        self.fast = not mode
        return super().train(mode)


def test_load_switches_a_model_to_eval_mode_through_its_own_train(tmp_path):
    # (load set the flags alone: the loaded model had training False but fast False)
    nn.register(_ModeAware)
    checkpoint.save(tmp_path / "ck", _ModeAware().eval(), epoch=1)
    loaded, _ = checkpoint.load(tmp_path / "ck")
    assert not loaded.training and loaded.fast


@pytest.mark.parametrize("tied", ["0.weight", [["0.weight", "9.weight"]], [["0.weight", "4.weight"]], [["0.weight"]]])
def test_a_re_signed_bad_tie_is_a_clear_error(tmp_path, tied):
    checkpoint.save(tmp_path / "ck", tied_model(), epoch=1)
    path = tmp_path / "ck" / "checkpoint.json"
    info = json.loads(path.read_text())
    info["tied"] = tied  # not a list; a name the model lacks; another shape (4x4 and 2x4); a group of one
    info["index_sha256"] = checkpoint._index_digest(info)
    path.write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="tie"):
        checkpoint.load(tmp_path / "ck")


class _Scale(nn.Module):
    """A layer with a scalar (0-d) parameter, as a learned temperature."""

    def __init__(self):
        self.t = nn.Parameter(np.array(1.5), "t")

    def _args(self):
        return {}

    def forward(self, x):
        self._x = x
        return x * self.t.data

    def backward(self, dy):
        self.t.accumulate(np.array((dy * self._x).sum()))
        return dy * self.t.data


@pytest.mark.parametrize("make", [lambda ps: optim.Adam(ps, lr=0.1), lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9)])
def test_a_scalar_parameter_and_its_optimizer_state_round_trip(tmp_path, make):
    """np.ascontiguousarray made the 0-d weight 1-d on save (the checkpoint then failed to load:
    shape (1,) vs ()), and its 0-d Adam/momentum buffers went to the JSON (a TypeError on save)."""
    nn.register(_Scale)
    model = nn.Sequential(nn.Linear(2, 2, dtype=np.float64, seed=0), _Scale())
    opt = make(model.parameters())
    model(np.ones((2, 2)))
    model.backward(np.ones((2, 2)))
    opt.step()
    checkpoint.save(tmp_path, model, optimizer=opt, epoch=1)
    loaded, _ = checkpoint.load(tmp_path)
    assert loaded[1].t.shape == () and loaded[1].t.data == model[1].t.data
    opt2 = make(loaded.parameters())
    checkpoint.load_into(tmp_path, loaded, opt2)
    assert opt2.state[2].keys() == opt.state[2].keys()
    for key, value in opt.state[2].items():
        np.testing.assert_array_equal(opt2.state[2][key], value)


def test_load_leaves_the_layer_initialization_generator_alone(tmp_path):
    """load() rebuilds the model from its config, which drew fresh weights and Dropout seeds from the
    generator nn.manual_seed sets: every model built after a load (train.search's next trial, after
    an improved one was copied) got other initial weights than without the load."""
    model, _ = model_and_input()
    checkpoint.save(tmp_path, model, epoch=0)
    nn.manual_seed(3)
    expected = nn.Linear(4, 4).weight.data.copy()
    nn.manual_seed(3)
    checkpoint.load(tmp_path)
    np.testing.assert_array_equal(nn.Linear(4, 4).weight.data, expected)


def test_load_never_swaps_the_generator_other_threads_see(tmp_path, monkeypatch):
    """load() swapped nn's module generator for its own while it rebuilt the model: a layer built in
    another thread meanwhile drew from the load's generator, and two threads loading at once restored
    each other's, so manual_seed's generator was replaced for good (18 of 20 runs of 3 threads)."""
    model, _ = model_and_input()
    checkpoint.save(tmp_path, model, epoch=0)
    nn.manual_seed(3)
    shared, during = nn._rng, []
    rebuild = nn.from_config
    monkeypatch.setattr(nn, "from_config", lambda cfg: during.append(nn._rng is shared) or rebuild(cfg))
    loaded, _ = checkpoint.load(tmp_path)
    assert during and all(during) and nn._rng is shared
    # The rebuilt model's Dropout still gets its seed from the load's own generator, as before.
    assert loaded.extra_state() == checkpoint.load(tmp_path)[0].extra_state()


def test_load_draws_no_initial_weights(tmp_path, monkeypatch):
    """load() rebuilt the model with freshly drawn initial weights and then overwrote them all: float64
    draws (then cast) that were most of a large model's load time and 3x its size in memory. Now the
    rebuilt layers draw nothing; a model built after the load, also after a failed one, is initialized."""
    model, x = model_and_input()
    checkpoint.save(tmp_path / "ck", model, epoch=0)
    checkpoint.save(tmp_path / "bad", model, epoch=0)
    bad = json.loads((tmp_path / "bad" / "checkpoint.json").read_text())
    bad["config"]["layers"][0]["in_features"] = 0  # re-signed: the config does not rebuild
    bad["index_sha256"] = checkpoint._index_digest(bad)
    (tmp_path / "bad" / "checkpoint.json").write_text(json.dumps(bad))

    def no_draws(*args):
        raise AssertionError("initial weights drawn")

    with monkeypatch.context() as patch:
        patch.setattr(nn, "_uniform", no_draws)
        loaded, _ = checkpoint.load(tmp_path / "ck")
        np.testing.assert_array_equal(outputs(loaded, x), outputs(model, x))
        with pytest.raises(AssertionError, match="initial weights drawn"):
            nn.Linear(3, 3)
        with pytest.raises(CheckpointError, match="cannot rebuild the model"):
            checkpoint.load(tmp_path / "bad")
        with pytest.raises(AssertionError, match="initial weights drawn"):
            nn.Linear(3, 3)
    nn.manual_seed(4)
    expected = nn.Linear(3, 3).weight.data.copy()
    nn.manual_seed(4)
    checkpoint.load(tmp_path / "ck")
    np.testing.assert_array_equal(nn.Linear(3, 3).weight.data, expected)


def test_no_init_is_the_loading_threads_own():
    """nn._no_init (what load builds the model in) is a context variable: a model another thread
    builds meanwhile is initialized (a global flag would give it zeros)."""
    drawn = {}
    with nn._no_init():
        thread = threading.Thread(target=lambda: drawn.update(weight=nn.Linear(4, 4, seed=1).weight.data.copy()))
        thread.start()
        thread.join()
        assert not nn.Linear(4, 4, seed=1).weight.data.any()
    np.testing.assert_array_equal(drawn["weight"], nn.Linear(4, 4, seed=1).weight.data)
    assert drawn["weight"].all()


@pytest.mark.parametrize("last_epoch, match", [(2.5, "last_epoch must be an int"), (-1, "last_epoch must be an int >= 0")])
def test_a_re_signed_bad_scheduler_state_is_a_checkpoint_error_that_changes_nothing(tmp_path, last_epoch, match):
    # The scheduler's state was loaded last, after the weights and the optimizer: a last_epoch its
    # load_state_dict refuses (3e79497) raised a TypeError / ValueError with those already written.
    model, _ = model_and_input()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    checkpoint.save(tmp_path / "ck", model, optimizer=opt, scheduler=optim.StepLR(opt, 2), epoch=1)
    path = tmp_path / "ck" / "checkpoint.json"
    info = json.loads(path.read_text())
    info["scheduler"]["last_epoch"] = last_epoch
    info["index_sha256"] = checkpoint._index_digest(info)
    path.write_text(json.dumps(info))
    other, _ = model_and_input(seed=3)
    opt2 = optim.SGD(other.parameters(), lr=0.5, momentum=0.9)
    scheduler = optim.StepLR(opt2, 2)
    before = [p.data.copy() for p in other.parameters()]
    with pytest.raises(CheckpointError, match=match):
        checkpoint.load_into(tmp_path / "ck", other, opt2, scheduler)
    for p, b in zip(other.parameters(), before):
        np.testing.assert_array_equal(p.data, b)
    assert opt2.state == {} and opt2.lr == 0.5 and scheduler.last_epoch == 0


def test_saves_to_one_directory_from_two_threads_take_turns(tmp_path, monkeypatch):
    """Each save deletes the weights and temp files its JSON does not name: a second thread's save
    run while the first was about to commit deleted the first's new weights, which the first's JSON
    then named (a checkpoint that no longer loads; from 4 threads, most saves also failed with
    FileNotFoundError). Here the second save starts at that moment and gets 0.5 s to run."""
    import threading

    first, _ = model_and_input(0)
    second, _ = model_and_input(1)
    write, errors, other = checkpoint._write_atomically, [], []

    def save_second():
        try:
            checkpoint.save(tmp_path, second, epoch=2)
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    def commit(directory, name, data):
        if name == checkpoint.INDEX and not other:
            other.append(threading.Thread(target=save_second))
            other[0].start()
            other[0].join(0.5)  # with the lock it waits for this save, which is holding it
        write(directory, name, data)

    monkeypatch.setattr(checkpoint, "_write_atomically", commit)
    checkpoint.save(tmp_path, first, epoch=1)
    other[0].join()
    assert not errors
    loaded, info = checkpoint.load(tmp_path)  # whole: the last committed save's model
    expected = {1: first, 2: second}[info["epoch"]]
    for (name, a), b in zip(loaded.state_dict().items(), expected.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert sum(name.startswith("weights-") for name in os.listdir(tmp_path)) == 1


@pytest.mark.parametrize("into", [False, True])
def test_a_load_during_a_save_reads_the_new_checkpoint(tmp_path, monkeypatch, into):
    """A save that replaces the checkpoint between a load's reads of its JSON and of its weights
    deletes the weights that JSON names: the load raised 'weights file ... is missing' (8,478 failed
    loads in a thread loading while 4 threads saved; one saving thread is enough). It now reads the
    new JSON. Here the save runs right after the load's first read of the JSON."""
    first, x = model_and_input(0)
    second, _ = model_and_input(1)
    checkpoint.save(tmp_path, first, epoch=1)
    read, saved = checkpoint.read_info, []

    def read_then_save(path):
        info = read(path)
        if not saved:
            saved.append(checkpoint.save(tmp_path, second, epoch=2))
        return info

    monkeypatch.setattr(checkpoint, "read_info", read_then_save)
    if into:
        model, _ = model_and_input(3)
        info = checkpoint.load_into(tmp_path, model)
    else:
        model, info = checkpoint.load(tmp_path)
    assert info["epoch"] == 2
    np.testing.assert_array_equal(outputs(model, x), outputs(second, x))


_SAVE_IN_A_FORKED_CHILD = """
import multiprocessing, sys, threading
from fastconv import checkpoint, nn

directory = sys.argv[1]
model = nn.Sequential(nn.Linear(6, 5, seed=0), nn.ReLU(), nn.Linear(5, 3, seed=1))
saving, done = threading.Event(), threading.Event()


def save_in_progress():  # a thread of the parent inside a save to the directory, holding its lock
    with checkpoint._lock_of(directory):
        saving.set()
        done.wait()


threading.Thread(target=save_in_progress).start()
saving.wait()
child = multiprocessing.get_context("fork").Process(target=checkpoint.save, args=(directory, model),
                                                    kwargs={"epoch": 1})
child.start()
child.join(30)
print("hung" if child.is_alive() else child.exitcode)
child.kill()
done.set()
"""


@pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="fork: POSIX")
def test_a_save_in_a_process_forked_during_a_save_runs(tmp_path):
    # A process forked while one of its parent's threads was saving to a directory inherited that
    # directory's lock as held, by a thread the child does not have: its own save there waited forever.
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", "-c", _SAVE_IN_A_FORKED_CHILD,
                          str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "0", run.stdout
    assert checkpoint.read_info(tmp_path)["epoch"] == 1


def test_save_removes_only_its_own_earlier_files(tmp_path):
    # The cleanup deleted every weights-*.safetensors and .tmp-* in the directory: a user's own
    # pre-trained weights beside the checkpoint were lost at the first save.
    model, x = model_and_input()
    mine = {"weights-pretrained.safetensors": b"precious", ".tmp-notes": b"mine", "weights-1.safetensors": b"too"}
    for name, data in mine.items():
        (tmp_path / name).write_bytes(data)
    stale = tmp_path / "weights-20260101T000000-0123abcd.safetensors"  # an interrupted save's (our name)
    stale.write_bytes(b"stale")
    (tmp_path / (".tmp-" + "ab" * 16)).write_bytes(b"half-written")
    for epoch in (1, 2):
        checkpoint.save(tmp_path, model, epoch=epoch)
    left = set(os.listdir(tmp_path))
    assert {name: (tmp_path / name).read_bytes() for name in mine} == mine
    ours = [name for name in left if name not in mine and name != checkpoint.INDEX]
    assert len(ours) == 1 and ours[0] == checkpoint.read_info(tmp_path)["weights"]["file"]
    np.testing.assert_array_equal(outputs(checkpoint.load(tmp_path)[0], x), outputs(model, x))


def test_save_refuses_to_replace_a_json_of_something_else(tmp_path):
    model, _ = model_and_input()
    (tmp_path / checkpoint.INDEX).write_text('{"my": "settings"}')
    with pytest.raises(CheckpointError, match="is not a fastconv checkpoint's JSON; save would replace it"):
        checkpoint.save(tmp_path, model, epoch=0)
    assert (tmp_path / checkpoint.INDEX).read_text() == '{"my": "settings"}'
    assert os.listdir(tmp_path) == [checkpoint.INDEX]
    # A file that is not JSON: a user's own (notes) was replaced as if a corrupt checkpoint's; it is
    # one only beside a weights file of save's own.
    (tmp_path / checkpoint.INDEX).write_text("lr=0.1 worked best")
    with pytest.raises(CheckpointError, match="is not a fastconv checkpoint's JSON; save would replace it"):
        checkpoint.save(tmp_path, model, epoch=0)
    assert os.listdir(tmp_path) == [checkpoint.INDEX]
    checkpoint.save(tmp_path / "ck", model, epoch=1)
    (tmp_path / "ck" / checkpoint.INDEX).write_text("{not json")  # a corrupt checkpoint's: replaced
    checkpoint.save(tmp_path / "ck", model, epoch=0)
    assert checkpoint.read_info(tmp_path / "ck")["epoch"] == 0


def test_an_unreadable_or_too_deep_json_is_a_checkpoint_error(tmp_path):
    (tmp_path / "a" / checkpoint.INDEX).mkdir(parents=True)
    with pytest.raises(CheckpointError, match="cannot read .*checkpoint.json"):
        checkpoint.read_info(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / checkpoint.INDEX).write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(CheckpointError, match="not valid JSON .*the checkpoint is corrupt"):
        checkpoint.read_info(tmp_path / "b")


class _OptimNamed(nn.Module):
    """A model whose submodule is named "optim", as the optimizer's tensors' prefix."""

    def __init__(self, inner=None):
        self.optim = inner if inner is not None else nn.Linear(3, 2, seed=0)

    def _args(self):
        return {}

    def forward(self, x):
        return self.optim(x)

    def backward(self, dy):
        return self.optim.backward(dy)


class _Buffered(nn.Module):
    """A layer whose parameter is named as an optimizer's buffer."""

    def __init__(self):
        self.momentum_buffer = nn.Parameter(np.ones(3, np.float32), "momentum_buffer")

    def _args(self):
        return {}

    def forward(self, x):
        self._x = x
        return x * self.momentum_buffer.data

    def backward(self, dy):
        self.momentum_buffer.accumulate((dy * self._x).sum(axis=0))
        return dy * self.momentum_buffer.data


def test_a_submodule_named_optim_saves_and_loads_with_an_optimizer(tmp_path):
    # load kept the model's tensors by the optimizer's prefix, "optim.": a model with a submodule of
    # that name saved checkpoints that never loaded ("missing keys ['optim.weight', ...]").
    nn.register(_OptimNamed)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)

    def trained(model):
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model.zero_grad()
        model.backward(np.ones_like(to_numpy(model(x))))
        opt.step()
        return opt

    model = _OptimNamed()
    opt = trained(model)
    checkpoint.save(tmp_path, model, optimizer=opt, epoch=1)
    target = _OptimNamed()
    target.optim.weight.data[:] = 0
    target_opt = optim.SGD(target.parameters(), lr=0.1, momentum=0.9)
    checkpoint.load_into(tmp_path, target, optimizer=target_opt)
    np.testing.assert_array_equal(to_numpy(target(x)), to_numpy(model(x)))
    np.testing.assert_array_equal(to_numpy(checkpoint.load(tmp_path)[0](x)), to_numpy(model(x)))
    assert target_opt.state.keys() == opt.state.keys()
    for i in opt.state:
        np.testing.assert_array_equal(to_numpy(target_opt.state[i]["momentum_buffer"]),
                                      to_numpy(opt.state[i]["momentum_buffer"]))
    # a model tensor named as the optimizer's own ("optim.0.momentum_buffer"): refused, not overwritten
    clash = _OptimNamed(nn.Sequential(_Buffered()))
    with pytest.raises(ValueError, match=r"the model's state names \['optim.0.momentum_buffer'\] are also the "):
        checkpoint.save(tmp_path / "clash", clash, optimizer=trained(clash), epoch=1)
    assert not (tmp_path / "clash").exists()


def test_save_takes_a_0d_array_as_the_metric(tmp_path):
    # a loss op's value is a 0-d array; the metric check had refused it (numbers.Real)
    model, _ = model_and_input()
    for metric in (np.array(0.25), np.float32(0.25), 0.25, 1):
        checkpoint.save(tmp_path, model, epoch=1, metric=metric)
        assert checkpoint.read_info(tmp_path)["metric"] == float(metric)
    for bad in ("good", True, np.array([0.25, 0.5]), None.__class__):
        with pytest.raises(TypeError, match="checkpoint.save: metric must be a number or None"):
            checkpoint.save(tmp_path, model, epoch=1, metric=bad)


@pytest.mark.parametrize("edit", [lambda i: i["module_state"].update({"2": {}}),
                                  lambda i: i["optimizer"].update(state=[1]),
                                  lambda i: i["optimizer"].pop("type"),
                                  lambda i: i.update(scheduler=[1])])
def test_a_json_edited_and_re_signed_is_a_checkpoint_error_before_anything_changes(tmp_path, edit):
    # A Dropout state without its generator failed (KeyError) after load_into had copied the weights;
    # an optimizer or scheduler state of the wrong shape was an AttributeError or KeyError.
    model, x = model_and_input()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.zero_grad()
    model.backward(np.ones_like(model(x)))
    opt.step()
    checkpoint.save(tmp_path / "ck", model, optimizer=opt, scheduler=optim.StepLR(opt, 1), epoch=1)
    index = tmp_path / "ck" / checkpoint.INDEX
    info = json.loads(index.read_text())
    edit(info)
    info["index_sha256"] = checkpoint._index_digest(info)
    index.write_text(json.dumps(info))
    other, _ = model_and_input(seed=5)
    other_opt = optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    before = [to_numpy(p.data).copy() for p in other.parameters()]
    generator = other[2]._gen.bit_generator.state
    with pytest.raises(CheckpointError,
                       match=r"(module|optimizer|scheduler) state in .* (does not fit|is malformed|is a list)"):
        checkpoint.load_into(tmp_path / "ck", other, other_opt, optim.StepLR(other_opt, 1))
    for b, p in zip(before, other.parameters()):
        np.testing.assert_array_equal(to_numpy(p.data), b)
    assert other_opt.state == {} and other[2]._gen.bit_generator.state == generator


def test_save_refuses_an_empty_path_a_dangling_link_a_bad_epoch_or_a_metric_past_float(tmp_path):
    # FileNotFoundError: '', a bare FileExistsError, epoch='three' saved, a bare OverflowError
    model, _ = model_and_input()
    with pytest.raises(CheckpointError, match="the checkpoint path is empty"):
        checkpoint.save("", model, epoch=1)
    os.symlink(tmp_path / "nowhere", tmp_path / "link")
    with pytest.raises(CheckpointError, match=r"'.*link' is a symbolic link to '.*nowhere', which does not exist"):
        checkpoint.save(tmp_path / "link", model, epoch=1)
    for epoch, error in (("three", TypeError), (2.0, TypeError), (-1, ValueError)):
        with pytest.raises(error, match="checkpoint.save: epoch must be an int"):
            checkpoint.save(tmp_path / "ck", model, epoch=epoch)
    with pytest.raises(ValueError, match=r"checkpoint.save: metric 1000\d+ is past the largest float"):
        checkpoint.save(tmp_path / "ck", model, epoch=1, metric=10 ** 400)
    assert sorted(os.listdir(tmp_path)) == ["link"]
