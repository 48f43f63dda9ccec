"""fastconv.optim: SGD / Adam / AdamW against a float64 NumPy re-implementation of torch.optim's
rules over several steps (frozen and gradient-less parameters untouched), state_dict round trips,
hyperparameter validation, and the learning-rate schedules' sequences."""
import math

import numpy as np
import pytest

from fastconv import nn, ops, optim
from helpers import on, to_numpy


def needs(*names):
    missing = [n for n in names if not hasattr(ops, n)]
    return pytest.mark.skipif(bool(missing), reason=f"ops not merged yet: {missing}")


# --- torch.optim's update rules in float64 NumPy ------------------------------------------------

def sgd_ref(p, grads, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    p, buf = p.copy(), None
    for g in grads:
        g = g + weight_decay * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


def adam_ref(p, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
    p, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
    b1, b2 = betas
    for t, g in enumerate(grads, 1):
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr / (1 - b1 ** t) * m / (np.sqrt(v) / math.sqrt(1 - b2 ** t) + eps)
    return p


CASES = [
    (optim.SGD, dict(lr=0.1), sgd_ref, {}),
    (optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.01), sgd_ref, {}),
    (optim.SGD, dict(lr=0.05, momentum=0.8, nesterov=True), sgd_ref, {}),
    (optim.Adam, dict(lr=0.01), adam_ref, {}),
    (optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1), adam_ref, {}),
    (optim.AdamW, dict(lr=0.01), adam_ref, dict(weight_decay=1e-2, decoupled=True)),
    (optim.AdamW, dict(lr=0.02, weight_decay=0.3, eps=1e-6), adam_ref, dict(decoupled=True)),
]


@needs("sgd_step", "adam_step")
@pytest.mark.parametrize("cls, kwargs, ref, ref_extra", CASES)
def test_optimizer_matches_torch_rules(backend, cls, kwargs, ref, ref_extra):
    rng = np.random.default_rng(0)
    start = [rng.standard_normal((3, 4)), rng.standard_normal(4), rng.standard_normal(2)]
    params = [nn.Parameter(on(backend, a.copy()), f"p{i}") for i, a in enumerate(start)]
    params[2].requires_grad = False  # frozen: never changes
    opt = cls(params, **kwargs)
    grads = [[rng.standard_normal(a.shape) for _ in range(5)] for a in start]
    for step in range(5):
        for p, g in zip(params, grads):
            p.grad = on(backend, g[step].copy())
        params[1].grad = None if step == 2 else params[1].grad  # no gradient this step: skipped
        opt.step()
    ref_kwargs = {**{k: v for k, v in kwargs.items() if k not in ("lr",)}, **ref_extra}
    expected0 = ref(start[0], grads[0], kwargs["lr"], **ref_kwargs)
    expected1 = ref(start[1], [g for i, g in enumerate(grads[1]) if i != 2], kwargs["lr"], **ref_kwargs)
    np.testing.assert_allclose(to_numpy(params[0].data), expected0, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(to_numpy(params[1].data), expected1, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(to_numpy(params[2].data), start[2])


@needs("sgd_step", "adam_step")
@pytest.mark.parametrize("cls, kwargs", [(optim.SGD, dict(lr=0.1, momentum=0.9)), (optim.AdamW, dict(lr=0.01))])
def test_state_dict_resumes_exactly(backend, cls, kwargs):
    rng = np.random.default_rng(1)
    start = rng.standard_normal((4, 3)).astype(np.float32)
    grads = [rng.standard_normal((4, 3)).astype(np.float32) for _ in range(6)]

    def run(p, opt, gs):
        for g in gs:
            p.grad = on(backend, g)
            opt.step()

    p_full = nn.Parameter(on(backend, start.copy()))
    opt_full = cls([p_full], **kwargs)
    run(p_full, opt_full, grads)

    p_a = nn.Parameter(on(backend, start.copy()))
    opt_a = cls([p_a], **kwargs)
    run(p_a, opt_a, grads[:3])
    saved = {"type": cls.__name__, "hyperparameters": opt_a.hyperparameters(),
             "state": {i: {k: (to_numpy(v).copy() if hasattr(v, "shape") else v) for k, v in s.items()}
                       for i, s in opt_a.state_dict()["state"].items()}}
    p_b = nn.Parameter(on(backend, to_numpy(p_a.data).copy()))
    opt_b = cls([p_b], lr=123.0)
    opt_b.load_state_dict(saved)
    assert opt_b.lr == kwargs["lr"]
    run(p_b, opt_b, grads[3:])
    np.testing.assert_array_equal(to_numpy(p_b.data), to_numpy(p_full.data))


def test_state_dict_errors():
    p = nn.Parameter(np.zeros(3, np.float32))
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="from an optimizer Adam"):
        opt.load_state_dict({"type": "Adam", "state": {}})
    with pytest.raises(ValueError, match="'momentum_buffer' is \\(4,\\)"):
        opt.load_state_dict({"type": "SGD", "state": {0: {"momentum_buffer": np.zeros(4, np.float32)}}})
    with pytest.raises(ValueError, match="optimizer has 1 parameters"):
        opt.load_state_dict({"type": "SGD", "state": {5: {"momentum_buffer": np.zeros(3, np.float32)}}})
    assert opt.state == {}


@pytest.mark.parametrize("make, message", [
    (lambda p: optim.SGD(p, lr=-0.1), "lr must be >= 0"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=1.0), "momentum must be < 1"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=-0.5), "momentum must be >= 0"),
    (lambda p: optim.SGD(p, lr=0.1, weight_decay=-1), "weight_decay must be >= 0"),
    (lambda p: optim.SGD(p, lr=0.1, nesterov=True), "nesterov=True needs momentum > 0"),
    (lambda p: optim.Adam(p, betas=(0.9, 1.0)), "betas\\[1\\] must be < 1"),
    (lambda p: optim.Adam(p, betas=0.9), "betas must be a pair"),
    (lambda p: optim.AdamW(p, eps=-1e-8), "eps must be > 0"),
    (lambda p: optim.Adam(p, eps=0.0), r"Adam: eps must be > 0.0, got 0.0"),  # every step() failed on it
    (lambda p: optim.AdamW(p, eps=0), r"AdamW: eps must be > 0.0, got 0.0"),
    (lambda p: optim.Adam([], lr=0.1), "empty parameter list"),
    (lambda p: optim.Adam(p, lr="fast"), "lr must be a real number"),
])
def test_hyperparameter_validation(make, message):
    params = [nn.Parameter(np.zeros(2, np.float32))]
    with pytest.raises((ValueError, TypeError), match=message):
        make(params)


def test_accepts_a_module_and_zero_grad():
    model = nn.Linear(3, 2)
    opt = optim.SGD(model, lr=0.1)
    assert opt.params == model.parameters()
    for p in model.parameters():
        p.grad = np.ones(p.shape, np.float32)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(TypeError, match="not a fastconv.nn.Parameter"):
        optim.SGD([np.zeros(3)], lr=0.1)


def test_a_parameter_listed_twice_is_updated_once():
    lin = nn.Linear(3, 2, seed=0)
    model = nn.Sequential(lin, nn.ReLU(), lin)  # one layer used twice: its parameters once
    assert model.parameters() == lin.parameters()
    w0 = lin.weight.data.copy()
    with pytest.warns(UserWarning, match=r"parameter 2 is parameter 0 again; it is updated once per step"):
        opt = optim.SGD(lin.parameters() + [lin.weight], lr=0.5)
    assert len(opt.params) == 2
    lin.weight.grad = np.ones_like(w0)
    opt.step()
    np.testing.assert_array_equal(lin.weight.data, w0 - np.float32(0.5))


def test_sgd_step_names_the_optimizers_parameters():
    flat = np.zeros(8, np.float32)
    a, b, c = nn.Parameter(np.zeros(2, np.float32), "a"), nn.Parameter(flat[:6], "b"), nn.Parameter(flat[4:], "c")
    for p in (a, b, c):
        p.grad = np.ones(p.shape, np.float32)
    a.grad = None  # no gradient: not in the step's call, so the call's params[0] is b
    with pytest.raises(ValueError, match=r"SGD.step: params\[0\] and params\[1\] share memory.*parameter \[1, 2\]\[k\]"):
        optim.SGD([a, b, c], lr=0.1).step()


def _params_with_a_bad_grad(cls):
    """Three parameters, float32 then two float64, after one good step; the second one's grad now
    float32 (SGD updates the float32 group first, Adam parameter 0 first)."""
    params = [nn.Parameter(np.ones(2, np.float32), "a"), nn.Parameter(np.ones(3), "b"), nn.Parameter(np.ones(3), "c")]
    opt = cls(params, lr=0.1, **({"momentum": 0.9} if cls is optim.SGD else {}))
    for p in params:
        p.grad = np.full(p.shape, 0.5, p.data.dtype)
    opt.step()
    params[1].grad = params[1].grad.astype(np.float32)
    return params, opt


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam, optim.AdamW])
def test_a_failed_step_changes_nothing(cls):
    """Every parameter and grad is checked before any is updated: a bad grad at parameter 1 left
    parameter 0 (and, for SGD, the other dtype's group) updated, and Adam's step counts advanced,
    so that the retried step had the wrong bias correction."""
    params, opt = _params_with_a_bad_grad(cls)
    data = [p.data.copy() for p in params]
    state = {i: {k: (v.copy() if hasattr(v, "copy") else v) for k, v in s.items()} for i, s in opt.state.items()}
    with pytest.raises(TypeError, match=rf"{cls.__name__}.step: the grad of parameter 1 \('b'\) is float32 but "
                                        r"the other inputs are float64"):
        opt.step()
    for p, before in zip(params, data):
        np.testing.assert_array_equal(p.data, before)
    assert opt.state.keys() == state.keys()
    for i, s in opt.state.items():
        assert s.keys() == state[i].keys()
        for k, v in s.items():
            np.testing.assert_array_equal(v, state[i][k])
    # The retried step is the second step, as if the failed one had never been called.
    params[1].grad = params[1].grad.astype(np.float64)
    opt.step()
    twice, reference = _params_with_a_bad_grad(cls)
    twice[1].grad = twice[1].grad.astype(np.float64)
    reference.step()
    for p, q in zip(params, twice):
        np.testing.assert_array_equal(p.data, q.data)
    if cls is not optim.SGD:
        assert [opt.state[i]["step"] for i in range(3)] == [2, 2, 2]



@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam, optim.AdamW])
def test_a_step_of_several_dtypes_checks_every_call_before_running_any(cls):
    """A step of two dtypes is two foreach calls; the pre-check covers params and grads only, so a
    bad state buffer (here: a parameter replaced by one of the other dtype, its buffers left behind)
    surfaced in the second call after the first had run: that group's params and buffers updated,
    and (Adam) its step counts not advanced, so the retried step's bias corrections were wrong."""
    params = [nn.Parameter(np.ones(3, np.float32), "a"), nn.Parameter(np.ones(2), "b"),
              nn.Parameter(np.ones(4, np.float32), "c")]
    opt = cls(params, lr=0.1, **({"momentum": 0.9} if cls is optim.SGD else {}))
    for p in params:
        p.grad = np.full(p.shape, 0.5, p.data.dtype)
    opt.step()
    params[2].data = params[2].data.astype(np.float64)  # its state buffers stay float32: the float64 call fails
    for p in params:
        p.grad = np.full(p.shape, 0.5, p.data.dtype)
    data = [p.data.copy() for p in params]
    state = {i: {k: (v.copy() if hasattr(v, "copy") else v) for k, v in s.items()} for i, s in opt.state.items()}
    with pytest.raises(TypeError, match=rf"{cls.__name__}.step: "):
        opt.step()
    for p, before in zip(params, data):
        np.testing.assert_array_equal(p.data, before)
    for i, s in opt.state.items():
        for k, v in s.items():
            np.testing.assert_array_equal(v, state[i][k])

def test_a_failed_first_adam_step_creates_no_state():
    p = nn.Parameter(np.ones(3))
    opt = optim.Adam([p], lr=0.1)
    p.grad = np.ones(3, np.float32)
    with pytest.raises(TypeError, match=r"Adam.step: grads\[0\] is float32 .*parameter \[0\]\[k\]"):
        opt.step()
    assert opt.state == {} and opt.state_dict()["state"] == {}
    p.grad = np.ones(3)
    opt.step()
    assert opt.state[0]["step"] == 1
    np.testing.assert_allclose(p.data, 1 - 0.1 / (1 + 1e-8), rtol=0, atol=0)  # a first step: lr * m / (|m| + eps)


def test_a_failed_first_sgd_step_creates_no_momentum_buffer():
    # one dtype: the step is one call, whose own checks refuse the grad; the buffers it was given
    # are kept only once it has been taken
    p = nn.Parameter(np.ones(3))
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = np.ones(3, np.float32)
    with pytest.raises(TypeError, match=r"SGD.step: "):
        opt.step()
    assert opt.state == {} and opt.state_dict()["state"] == {}
    p.grad = np.ones(3)
    opt.step()
    np.testing.assert_array_equal(opt.state[0]["momentum_buffer"], np.ones(3))
    np.testing.assert_allclose(p.data, 0.9, rtol=0, atol=1e-15)


@pytest.mark.parametrize("cls, state_dict, error, message", [
    (optim.SGD, {"type": "SGD", "hyperparameters": {"lr": -5.0, "momentum": 2.0}, "state": {}},
     ValueError, r"SGD.load_state_dict: lr must be >= 0.0, got -5.0"),
    (optim.SGD, {"type": "SGD", "hyperparameters": {"momentum": 2.0}, "state": {}},
     ValueError, r"SGD.load_state_dict: momentum must be < 1.0, got 2.0"),
    (optim.SGD, {"type": "SGD", "hyperparameters": {"lr": "fast"}, "state": {}},
     TypeError, r"SGD.load_state_dict: lr must be a real number, got 'fast'"),
    (optim.SGD, {"type": "SGD", "hyperparameters": {"momentum": 0.5, "nesterov": 1}, "state": {}},
     TypeError, r"SGD.load_state_dict: nesterov must be True or False, got 1"),
    (optim.SGD, {"type": "SGD", "hyperparameters": {"betas": [0.9, 0.99]}, "state": {}},
     ValueError, r"SGD.load_state_dict: unknown hyperparameters \['betas'\] \(a SGD has \['lr', 'momentum', "),
    (optim.Adam, {"type": "Adam", "hyperparameters": {"eps": 0.0}, "state": {}},
     ValueError, r"Adam.load_state_dict: eps must be > 0.0, got 0.0"),
    (optim.Adam, {"type": "Adam", "hyperparameters": {"betas": [0.9]}, "state": {}},
     ValueError, r"Adam.load_state_dict: betas must be a pair"),
    (optim.Adam, {"type": "Adam", "state": {0: {"exp_avg": np.zeros(3), "exp_avg_sq": np.zeros(3)}}},
     KeyError, r"Adam.load_state_dict: parameter 0 lacks its 'step' count"),
    (optim.Adam, {"type": "Adam", "state": {0: {"exp_avg": np.zeros(3), "exp_avg_sq": np.zeros(3), "step": 0}}},
     ValueError, r"Adam.load_state_dict: parameter 0's 'step' \(the steps taken\) must be an int >= 1, got 0"),
    (optim.Adam, {"type": "Adam", "state": {0: {"exp_avg": np.zeros(3), "exp_avg_sq": np.zeros(3), "step": 1.5}}},
     TypeError, r"parameter 0's 'step' \(the steps taken\) must be an int, got 1.5"),
    (optim.Adam, {"type": "Adam", "state": {0: {"exp_avg": np.zeros(3), "exp_avg_sq": np.zeros(3, np.float32),
                                                "step": 1}}},
     ValueError, r"parameter 0's 'exp_avg_sq' is \(3,\) float32, but the parameter is \(3,\) float64"),
    (optim.Adam, {"type": "Adam", "state": {0: {"exp_avg": [0.0] * 3, "exp_avg_sq": np.zeros(3), "step": 1}}},
     TypeError, r"parameter 0's 'exp_avg' must be an array, got list"),
    (optim.Adam, {"type": "Adam", "state": {0: {"exp_avg": np.zeros(3), "exp_avg_sq": np.zeros(3), "step": 1,
                                                "momentum_buffer": np.zeros(3)}}},
     ValueError, r"parameter 0's state has \['momentum_buffer'\], which this Adam does not keep \(it keeps "
                 r"\['exp_avg', 'exp_avg_sq', 'step'\]\)"),
    (optim.SGD, {"type": "SGD", "state": {"first": {"momentum_buffer": np.zeros(3)}}},
     ValueError, r"SGD.load_state_dict: the state's keys must be parameter indices, got 'first'"),
    (optim.SGD, {"type": "SGD", "state": {0: np.zeros(3)}},
     TypeError, r"SGD.load_state_dict: parameter 0's state must be a dict, got ndarray"),
])
def test_load_state_dict_checks_and_changes_nothing_on_an_error(cls, state_dict, error, message):
    """Bad hyperparameters and state entries are refused at load time (they loaded, then failed in
    step()), and the optimizer keeps its hyperparameters and state."""
    p = nn.Parameter(np.ones(3))
    opt = cls([p], lr=0.1, **({"momentum": 0.9} if cls is optim.SGD else {}))
    p.grad = np.ones(3)
    opt.step()
    hyperparameters, state = opt.hyperparameters(), {i: dict(s) for i, s in opt.state.items()}
    with pytest.raises(error, match=message):
        opt.load_state_dict(state_dict)
    with pytest.raises(error, match=message):
        opt.check_state_dict(state_dict)
    assert opt.hyperparameters() == hyperparameters and opt.state.keys() == state.keys()
    for i, s in opt.state.items():
        assert s.keys() == state[i].keys() and all(v is state[i][k] for k, v in s.items())


def test_load_state_dict_takes_string_indices_and_keeps_the_current_hyperparameters_not_given():
    p = nn.Parameter(np.ones(3))
    opt = optim.Adam([p], lr=0.1, eps=1e-6)
    opt.load_state_dict({"type": "Adam", "hyperparameters": {"betas": [0.8, 0.9]},
                         "state": {"0": {"exp_avg": np.ones(3), "exp_avg_sq": np.ones(3), "step": np.int64(4)}}})
    assert (opt.lr, opt.betas, opt.eps) == (0.1, (0.8, 0.9), 1e-6)
    assert opt.state[0]["step"] == 4 and type(opt.state[0]["step"]) is int


def test_optimizer_repr_shows_betas_as_the_tuple_it_holds():
    """betas showed as a list (hyperparameters() is JSON's form), where the optimizer (and torch) hold a tuple."""
    opt = optim.AdamW([nn.Parameter(np.zeros(1, np.float32))], lr=0.01, betas=[0.8, 0.99])
    assert repr(opt) == "AdamW(lr=0.01, betas=(0.8, 0.99), eps=1e-08, weight_decay=0.01)" and opt.betas == (0.8, 0.99)
    assert repr(optim.SGD(opt.params, lr=0.1, momentum=0.9)) == \
        "SGD(lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=False)"


def test_schedulers_repr_shows_their_settings_and_where_they_are():
    """StepLR and CosineAnnealingLR had the default repr (<fastconv.optim.StepLR object at 0x...>)."""
    opt = optim.SGD([nn.Parameter(np.zeros(1, np.float32))], lr=0.5)
    sched = optim.StepLR(opt, step_size=3, gamma=0.5)
    for _ in range(3):
        sched.step()
    assert repr(sched) == "StepLR(step_size=3, gamma=0.5, base_lr=0.5, last_epoch=3, lr=0.25)"
    assert repr(optim.CosineAnnealingLR(opt, T_max=5)) == \
        "CosineAnnealingLR(T_max=5, eta_min=0.0, base_lr=0.25, last_epoch=0, lr=0.25)"


def test_step_lr_sequence():
    opt = optim.SGD([nn.Parameter(np.zeros(1, np.float32))], lr=0.5)
    sched = optim.StepLR(opt, step_size=3, gamma=0.5)
    lrs = [opt.lr]
    for _ in range(9):
        sched.step()
        lrs.append(opt.lr)
    expected = [0.5 * 0.5 ** (e // 3) for e in range(10)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-15)


def test_cosine_lr_sequence_and_state():
    opt = optim.Adam([nn.Parameter(np.zeros(1, np.float32))], lr=0.1)
    sched = optim.CosineAnnealingLR(opt, T_max=5, eta_min=0.01)
    lrs = [opt.lr]
    for _ in range(5):
        sched.step()
        last = sched.get_last_lr()
        assert isinstance(last, list) and len(last) == 1  # torch's form: one entry per parameter group
        lrs.append(last[0])
    expected = [0.01 + 0.09 * (1 + math.cos(math.pi * e / 5)) / 2 for e in range(6)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-14)
    assert lrs[-1] == pytest.approx(0.01) and lrs[0] == 0.1
    # Resume: a fresh scheduler loaded from the state continues the same sequence.
    opt2 = optim.Adam([nn.Parameter(np.zeros(1, np.float32))], lr=0.1)
    sched2 = optim.CosineAnnealingLR(opt2, T_max=5, eta_min=0.01)
    sched2.load_state_dict(sched.state_dict())
    assert opt2.lr == opt.lr
    with pytest.raises(ValueError, match="T_max must be an int >= 1"):
        optim.CosineAnnealingLR(opt, T_max=0)
    with pytest.raises(ValueError, match="step_size must be an int >= 1"):
        optim.StepLR(opt, step_size=0)
    # A float where an int is needed is a TypeError (as in the ops), not a value out of range.
    with pytest.raises(TypeError, match="CosineAnnealingLR: T_max must be an int, got 5.5"):
        optim.CosineAnnealingLR(opt, T_max=5.5)
    with pytest.raises(TypeError, match="StepLR: step_size must be an int, got 1.5"):
        optim.StepLR(opt, step_size=1.5)
    # A state's last_epoch is checked too (int() truncated 2.5 to 2), before anything changes.
    state = {**sched.state_dict(), "last_epoch": 2.5, "base_lr": 1.0}
    with pytest.raises(TypeError, match="CosineAnnealingLR.load_state_dict: last_epoch must be an int, got 2.5"):
        sched2.load_state_dict(state)
    with pytest.raises(ValueError, match="last_epoch must be an int >= 0, got -1"):
        sched2.load_state_dict({**state, "last_epoch": -1})
    assert sched2.base_lr == 0.1 and sched2.last_epoch == sched.last_epoch


@pytest.mark.parametrize("make, other", [(lambda o: optim.StepLR(o, step_size=2, gamma=0.5), dict(step_size=3, gamma=0.9)),
                                         (lambda o: optim.CosineAnnealingLR(o, T_max=6, eta_min=0.01),
                                          dict(T_max=10, eta_min=0.0))])
def test_a_schedulers_state_holds_its_hyperparameters_and_loading_takes_them(make, other):
    """The state held base_lr and the step count only: a scheduler of another gamma (or T_max) took
    it and continued another schedule, the lr jumping mid-run. Now the saved schedule is taken whole
    (as torch's load_state_dict does), and an older state without them keeps the scheduler's own."""
    opt = optim.SGD([nn.Parameter(np.zeros(1, np.float32))], lr=0.1)
    sched = make(opt)
    for _ in range(3):
        sched.step()
    state = sched.state_dict()
    assert state["hyperparameters"] == sched.hyperparameters()
    opt2 = optim.SGD([nn.Parameter(np.zeros(1, np.float32))], lr=0.1)
    sched2 = type(sched)(opt2, **other)
    sched2.load_state_dict(state)
    assert sched2.hyperparameters() == sched.hyperparameters() and opt2.lr == opt.lr
    for _ in range(4):
        sched.step()
        sched2.step()
        assert opt2.lr == opt.lr
    sched3 = type(sched)(optim.SGD([nn.Parameter(np.zeros(1, np.float32))], lr=0.1), **other)
    sched3.load_state_dict({k: v for k, v in state.items() if k != "hyperparameters"})
    assert sched3.hyperparameters() == other and sched3.last_epoch == 3


def test_a_schedulers_state_whose_lr_cannot_be_computed_is_refused_before_anything_changes():
    # StepLR's overflow was found only after base_lr and last_epoch were set (and, in load_into, after
    # the weights were copied); CosineAnnealingLR's huge epoch was a bare OverflowError.
    opt = optim.SGD([nn.Parameter(np.zeros(1, np.float32))], lr=0.1)
    step = optim.StepLR(opt, step_size=1, gamma=10.0)
    with pytest.raises(ValueError, match=r"StepLR: the lr at epoch 400, .* is past the largest float"):
        step.load_state_dict({**step.state_dict(), "base_lr": 0.5, "last_epoch": 400})
    assert (step.base_lr, step.last_epoch, opt.lr) == (0.1, 0, 0.1)
    cosine = optim.CosineAnnealingLR(opt, T_max=10)
    with pytest.raises(ValueError, match=r"CosineAnnealingLR.load_state_dict: the lr at epoch 1000\d+ of this state "
                                         r"is not finite"):
        cosine.load_state_dict({**cosine.state_dict(), "last_epoch": 10 ** 400})
    assert (cosine.last_epoch, opt.lr) == (0, 0.1)


def test_a_schedulers_saved_hyperparameters_are_checked_before_anything_changes():
    opt = optim.SGD([nn.Parameter(np.zeros(1, np.float32))], lr=0.1)
    sched = optim.StepLR(opt, step_size=2, gamma=0.5)
    state = sched.state_dict()
    for hyper, error, match in ((dict(step_size=0, gamma=0.5), ValueError, "StepLR: step_size must be an int >= 1"),
                                (dict(step_size=2.5, gamma=0.5), TypeError, "StepLR: step_size must be an int"),
                                (dict(step_size=2), ValueError, r"hyperparameters must be a dict of step_size, gamma"),
                                ([2, 0.5], ValueError, "hyperparameters must be a dict")):
        with pytest.raises(error, match=match):
            sched.load_state_dict({**state, "last_epoch": 5, "hyperparameters": hyper})
        assert sched.hyperparameters() == dict(step_size=2, gamma=0.5) and sched.last_epoch == 0 and opt.lr == 0.1


def test_an_optimizer_state_keyed_by_a_digit_that_is_not_an_index_is_refused():
    # "²" passed str.isdigit() and then failed in int()
    opt = optim.SGD([nn.Parameter(np.zeros(1, np.float32))], lr=0.1, momentum=0.9)
    state = opt.state_dict()
    with pytest.raises(ValueError, match="the state's keys must be parameter indices, got '²'"):
        opt.load_state_dict({**state, "state": {"²": {"momentum_buffer": np.zeros(1, np.float32)}}})


def test_a_schedule_of_the_users_without_hyperparameters_loads_its_state():
    # The state check built a probe schedule by calling the constructor with the saved
    # hyperparameters: one with a required argument of its own and none declared could not load.
    class Warmup(optim.LRScheduler):
        def __init__(self, optimizer, warmup):
            super().__init__(optimizer)
            self.warmup = warmup

        def lr_at(self, epoch):
            return self.base_lr * min(1.0, (epoch + 1) / self.warmup)

    opt = optim.SGD([nn.Parameter(np.zeros(1, np.float32))], lr=0.1)
    sched = Warmup(opt, 5)
    sched.step()
    other = Warmup(optim.SGD([nn.Parameter(np.zeros(1, np.float32))], lr=0.1), 5)
    other.load_state_dict(sched.state_dict())
    assert other.last_epoch == 1 and other.optimizer.lr == opt.lr


def test_checking_a_schedules_state_leaves_the_optimizers_lr():
    # A schedule that sets the optimizer's lr in its constructor (as torch's do) was constructed
    # with the saved hyperparameters to check them: check_state_dict changed the lr it promises
    # to leave alone.
    class Warmup(optim.LRScheduler):
        _hyperparameters = ("warmup",)

        def __init__(self, optimizer, warmup):
            super().__init__(optimizer)
            self.warmup = warmup
            optimizer.lr = self.lr_at(0)

        def lr_at(self, epoch):
            return self.base_lr * min(1.0, (epoch + 1) / self.warmup)

    opt = optim.SGD([nn.Parameter(np.zeros(1, np.float32))], lr=0.1)
    sched = Warmup(opt, 4)
    for _ in range(2):
        sched.step()
    state = sched.state_dict()
    other_opt = optim.SGD([nn.Parameter(np.zeros(1, np.float32))], lr=0.1)
    other = Warmup(other_opt, 10)
    before = other_opt.lr
    assert other.check_state_dict(state)[3] == pytest.approx(0.075)
    assert other_opt.lr == before
    other.load_state_dict(state)
    assert other.warmup == 4 and other_opt.lr == pytest.approx(0.075)


@pytest.mark.parametrize("make, buffers", [
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), ("momentum_buffer",)),
    (lambda ps: optim.Adam(ps, lr=0.1), ("exp_avg", "exp_avg_sq")),
])
def test_an_optimizer_state_with_nan_is_refused(make, buffers):
    # NaN < 0 is false: an all-NaN exp_avg_sq passed the negative-values check, and the next
    # step made the parameter NaN.
    params = [nn.Parameter(np.ones(3, np.float32))]
    opt = make(params)
    for buf in buffers:
        entry = {b: np.zeros(3, np.float32) for b in buffers}
        entry[buf][1] = np.nan
        state = {**opt.state_dict(), "state": {0: {**entry, **({"step": 1} if opt._counts_steps else {})}}}
        with pytest.raises(ValueError, match=f"parameter 0's '{buf}' has NaN values: a step would make the "
                                             "parameter non-finite"):
            opt.load_state_dict(state)
        assert opt.state == {}
        entry[buf][1] = np.inf  # an infinite momentum or first moment too; the second's stops the step
        state = {**opt.state_dict(), "state": {0: {**entry, **({"step": 1} if opt._counts_steps else {})}}}
        if buf == "exp_avg_sq":
            opt.load_state_dict(state)
            opt.state = {}
            continue
        with pytest.raises(ValueError, match=f"parameter 0's '{buf}' has infinite values"):
            opt.load_state_dict(state)
        assert opt.state == {}


def test_an_sgd_whose_momentum_was_set_to_0_loads_its_own_state_and_keeps_its_buffers(tmp_path):
    """A schedule may take momentum to 0 after some steps: the buffers stay in the state (as torch's),
    and that state loads back, into this optimizer and through a checkpoint; raised again, momentum
    goes on from them, as torch's does."""
    from fastconv import checkpoint

    def steps(reload):
        model = nn.Linear(1, 3, bias=False, dtype=np.float64)
        (p,) = model.parameters()
        p.data[...] = 1.0
        opt = optim.SGD([p], lr=0.1, momentum=0.9)
        for g in (1.0, 2.0):
            p.grad = np.full((3, 1), g)
            opt.step()
        opt.momentum = 0.0
        p.grad = np.full((3, 1), 3.0)
        opt.step()
        reload(model, opt)
        opt.momentum = 0.9
        p.grad = np.full((3, 1), 4.0)
        opt.step()
        return p.data

    def through_state_dict(model, opt):
        opt.load_state_dict(opt.state_dict())

    def through_a_checkpoint(model, opt):
        checkpoint.save(tmp_path / "c", model, optimizer=opt, epoch=1)
        checkpoint.load_into(tmp_path / "c", model, opt)

    def unchanged(model, opt):
        pass

    expected = steps(unchanged)
    # torch: v = 1; v = 0.9 + 2 = 2.9; (momentum 0: p -= lr * 3, v kept); v = 0.9 * 2.9 + 4 = 6.61
    np.testing.assert_allclose(expected, 1 - 0.1 * (1 + 2.9 + 3 + 6.61))
    for how in (through_state_dict, through_a_checkpoint):
        np.testing.assert_array_equal(steps(how), expected)


def test_a_state_without_the_buffers_momentum_needs_is_still_refused():
    p = nn.Parameter(np.ones(3))
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    with pytest.raises(KeyError, match="lacks its 'momentum_buffer'"):
        opt.load_state_dict({"type": "SGD", "hyperparameters": {}, "state": {0: {}}})
    with pytest.raises(ValueError, match=r"has \['velocity'\], which this SGD does not keep"):
        opt.load_state_dict({"type": "SGD", "hyperparameters": {}, "state": {0: {"velocity": np.zeros(3)}}})


@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), lambda ps: optim.Adam(ps, lr=0.1),
                                  lambda ps: optim.AdamW(ps, lr=0.1)], ids=["SGD", "Adam", "AdamW"])
def test_a_state_dict_is_a_snapshot_that_later_steps_leave_as_it_was(backend, make):
    """state_dict() copies the buffers: kept to roll back to, it holds one point of training (the
    buffers were the live arrays and the step counts copies: a mix of two points)."""
    p = nn.Parameter(on(backend, np.ones(3)))
    opt = make([p])
    p.grad = on(backend, np.ones(3))
    opt.step()
    sd = opt.state_dict()
    held = {k: to_numpy(v).copy() for k, v in sd["state"][0].items() if k != "step"}
    after_one = to_numpy(p.data).copy()
    p.grad = on(backend, np.full(3, 5.0))
    opt.step()
    for k, v in held.items():
        np.testing.assert_array_equal(to_numpy(sd["state"][0][k]), v)
    once_more = to_numpy(p.data).copy()
    p.data[...] = on(backend, after_one)
    opt.load_state_dict(sd)
    opt.step()
    np.testing.assert_array_equal(to_numpy(p.data), once_more)


def test_a_grad_that_is_not_an_array_is_a_type_error():
    p = nn.Parameter(np.ones(3))
    p.grad = [1.0, 2.0, 3.0]
    for opt in (optim.SGD([p], lr=0.1), optim.Adam([p])):
        with pytest.raises(TypeError, match="parameter 0 .* has a grad of type list, not an array"):
            opt.step()
