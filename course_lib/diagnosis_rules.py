"""The rules of :func:`course_lib.diagnose`: scale-free thresholds, what the model is built of, and
advice that fits it.

Every rule compares numbers of one model with each other, never with an absolute size, so that a
loss multiplied by 1e-3, ``reduction="sum"`` over a big batch, or a model near convergence reads
the same as at init. Each threshold below says in one line where it comes from; the calibration
table (which rule fires on which model, and why) is in ``docs/diagnose.md``, and
``tests/test_diagnose_calibration.py`` checks it on a zoo of real architectures and on planted
defects.

A *trend* is the per-layer (or per-time-step) geometric factor ``f`` fitted through the log of a
profile (:func:`course_lib.gradients.per_step_factor`), raised to the number of steps it spans:
``f ** (n - 1)``, the change from one end to the other that the fit predicts. A fit, rather than
the two end points, keeps one odd layer (a squeeze-and-excitation gate, a classifier on pooled
features) from deciding the verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from course_lib.gradients import per_step_factor

# -- thresholds ---------------------------------------------------------------------------------
#: ``vanishing``: the fitted trend of the backpropagated signal ||dL/dh|| over the trained layers
#: falls below this from the output end to the input end: at one learning rate the input-side
#: layers then take steps 1000x smaller than the output side's (zoo at init: 3e-2 at the
#: lowest; planted defects: 4.5e-5 at the highest).
SIGNAL_VANISHING = 1e-3
#: ``exploding``: the fitted signal trend grows by more than this toward the input ...
SIGNAL_EXPLODING = 1e2
#: ... at more than this factor per layer. Deep residual nets grow slowly and train (at init,
#: full-size ResNet-50: 1.10 per layer, 150x in all; ResNet-152: 1.05, 2e3); a plain BatchNorm
#: net grows 1.15-1.25 per layer because of BatchNorm (Yang et al. 2019, lesson 09), an
#: over-scaled init 1.5 and more. The least certain threshold of the set: see docs/diagnose.md.
SIGNAL_FACTOR_EXPLODING = 1.14
#: ``vanishing``: the forward signal, the per-unit spread of the activations across the batch,
#: falls below this fraction from the first activation site to the last (fitted trend): the
#: output then hardly depends on the input, so every weight gradient, which is the signal from
#: above times the activation from below, is small (the traps of lesson 07; zoo: 0.27 at least).
SPREAD_COLLAPSE = 1e-2
#: ``exploding``: the forward spread grows by more than this from the first site to the last:
#: each layer amplifies, the logits start far too large and the first SGD steps overshoot
#: (lesson 10's ReLU net at 1.5x He grows 21x over 10 layers and overflows in 3 steps; zoo: 3.7
#: at most).
SPREAD_GROWTH = 10.0
#: The spread trends need at least this many activation sites to mean anything.
MIN_SITES = 4
#: The depth trends need at least this many layers with a gradient.
MIN_LAYERS = 3
#: ``vanishing``: the median trained layer's ||dL/dW|| * ||W|| / |loss| is below this. That is the
#: largest relative change of the loss per unit relative change of the layer's weights
#: (|<dL/dW, W>| <= ||dL/dW|| ||W||), so it does not depend on the loss's scale or the weights'
#: scale: below 1e-4 a 1 % change of the weights moves the loss by at most 1e-6 of itself
#: (zoo: 7e-3 at the lowest; the two traps of lesson 07: 2e-5 and 5e-5).
SENSITIVITY_VANISHING = 1e-4
#: Recurrent layers and cells: ``vanishing`` when the fitted trend of ||dL/dx_t|| from the last
#: time step back to the first falls below this: a dependency that long gets 1000x less gradient
#: than the recent steps and is not learned (a tanh RNN over 100 steps: 1e-20; 8 steps: 0.03).
TEMPORAL_VANISHING = 1e-3
#: ... ``exploding`` when it grows by more than this going back in time (a ReLU RNN with spectral
#: radius 1.5 over 30 steps: 1e5).
TEMPORAL_EXPLODING = 1e2
#: ``saturation`` when more than this fraction of a sigmoid/tanh site's outputs sit where the
#: derivative is below 5 % of its peak: the layer then passes a fraction of its gradient (zoo: 0 %;
#: lesson 02's sigmoid net with N(0, 1) weights: 42 %).
SATURATED_FRACTION = 0.25
#: ``dead_units`` when more than this fraction of a site's units output exactly 0 for every
#: example: the layer passes almost no gradient. Healthy nets reach 62 % in squeeze-and-excitation
#: gates, whose pooled inputs barely vary across a batch at init; dead layers reach 100 %.
DEAD_FRACTION = 0.9
#: A gate candidate: a trainable parameter (not a bias) that is all zeros, or a vector (a layer
#: scale) whose entries are all at most this in size.
SMALL_GATE = 1e-3
#: A layer is *behind* a gate when opening the gates multiplies its gradient by at least this
#: (or makes an exactly-zero gradient nonzero).
GATE_GAIN = 1e2

#: Kinds of problem findings, and kinds of notes (what is not trained, by design or by choice).
KINDS: tuple[str, ...] = ("vanishing", "exploding", "saturation", "dead_units")
NOTE_KINDS: tuple[str, ...] = ("frozen", "unused", "zero_init_branch")

#: The lessons that teach each fix (the course's final numbering).
LESSONS: dict[str, str] = {
    "02": "02 · saturation",
    "03": "03 · initialization",
    "04": "04 · depth",
    "05": "05 · exploding gradients",
    "06": "06 · the ReLU family",
    "07": "07 · Xavier and He initialization",
    "08": "08 · normalization",
    "09": "09 · residual connections",
    "10": "10 · gradient clipping",
    "11": "11 · convolutional networks",
    "12": "12 · LSTM and GRU",
    "13": "13 · Transformers",
}


@dataclass(frozen=True)
class Fix:
    """One suggested fix and the lesson that teaches it (a key of :data:`LESSONS`)."""

    text: str
    lesson: str

    def __str__(self) -> str:
        return f"{self.text} (lesson {LESSONS.get(self.lesson, self.lesson)})"


@dataclass
class Finding:
    """One problem (``kind`` in :data:`KINDS`) or note (``kind`` in :data:`NOTE_KINDS`): the
    ``layers`` (or activation sites) it concerns, the numbers behind it (``evidence``), a
    one-line ``message`` and the suggested ``fixes``."""

    kind: str
    layers: list[str]
    evidence: dict[str, float]
    message: str
    fixes: list[Fix] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass(frozen=True)
class Architecture:
    """What the model is built of, as far as the advice needs it."""

    skip: bool = False            # an identity path around some block (residual or dense)
    batchnorm: bool = False
    norm: bool = False            # any normalization layer (BatchNorm, LayerNorm, RMSNorm, ...)
    attention: bool = False
    saturating: bool = False      # most activation sites are sigmoid/tanh
    vanilla_rnn: bool = False     # nn.RNN or nn.RNNCell
    lstm: bool = False
    gru: bool = False


@dataclass
class Measurements:
    """What the rules read. Per trained layer (input to output): ``signal`` ||dL/dh||,
    ``grad`` ||dL/dW||, ``weight`` ||W||; per activation site: ``kinds``, ``spread``,
    ``saturated``, ``dead``; per recurrent layer or cell: ||dL/dx_t|| over time."""

    layers: list[str]
    signal: np.ndarray
    grad: np.ndarray
    weight: np.ndarray
    loss: float
    sites: list[str]
    kinds: list[str]
    spread: np.ndarray
    saturated: np.ndarray
    dead: np.ndarray
    temporal: dict[str, np.ndarray]
    arch: Architecture
    nonfinite: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)


def trend(values: Sequence[float] | np.ndarray) -> tuple[float, float, int]:
    """``(total, factor, n)``: the fitted per-step factor over the positive finite ``values``
    (ordered input to output, or first to last step), the change it predicts from one end to the
    other, ``factor ** (n - 1)`` (below 1: smaller at the start), and how many values it used.
    ``(nan, nan, n)`` with fewer than two usable values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    if len(v) < 2:
        return math.nan, math.nan, len(v)
    f = per_step_factor(v, "fit")
    return f ** (len(v) - 1), f, len(v)


def forward_trend(values: Sequence[float] | np.ndarray) -> tuple[float, int]:
    """The fitted change from the first site to the last (above 1: grows going forward)."""
    total, _, n = trend(values)
    return (1.0 / total if math.isfinite(total) and total > 0 else math.nan), n


# -- the rules ----------------------------------------------------------------------------------
def statistics(m: Measurements) -> dict[str, float]:
    """Every number the rules compare with a threshold, whether or not a rule fires (NaN where a
    rule has too little to go on): ``signal_trend`` and ``signal_factor`` (depth),
    ``spread_trend`` (forward, first site to last), ``median_sensitivity`` (relative to the loss),
    ``temporal_trend`` (the most extreme recurrent layer or cell), ``max_saturated``,
    ``max_dead``."""
    total, f, n = trend(m.signal)
    growth, n_sites = forward_trend(m.spread)
    sens = _sensitivity(m)
    usable = sens[np.isfinite(sens) & (sens > 0)]
    temporal = [trend(v)[0] for v in m.temporal.values()]
    temporal = [t for t in temporal if math.isfinite(t) and t > 0]
    finite = lambda v: v[np.isfinite(v)]  # noqa: E731
    return {
        "signal_trend": total if n >= MIN_LAYERS else math.nan,
        "signal_factor": f if n >= MIN_LAYERS else math.nan,
        "spread_trend": growth if n_sites >= MIN_SITES else math.nan,
        "median_sensitivity": float(np.median(usable)) if len(usable) >= MIN_LAYERS else math.nan,
        "temporal_trend": max(temporal, key=lambda t: abs(math.log(t))) if temporal else math.nan,
        "max_saturated": float(finite(m.saturated).max()) if len(finite(m.saturated)) else math.nan,
        "max_dead": float(finite(m.dead).max()) if len(finite(m.dead)) else math.nan,
    }


def find(m: Measurements) -> list[Finding]:
    """The problem findings, exploding first (non-finite numbers make every other rule moot)."""
    findings = []
    exploding = _exploding(m)
    if exploding is not None:
        findings.append(exploding)
    else:
        vanishing = _vanishing(m)
        if vanishing is not None:
            findings.append(vanishing)
    return findings + _saturation(m) + _dead(m)


def _exploding(m: Measurements) -> Finding | None:
    parts, layers, evidence = [], [], {}
    temporal_hit = False
    if m.nonfinite or not math.isfinite(m.loss):
        parts.append(f"the loss is {m.loss:.3g} and {len(m.nonfinite)} layer(s) have non-finite "
                     "gradients")
        layers += m.nonfinite
        evidence["nonfinite_layers"] = float(len(m.nonfinite))
    total, f, n = trend(m.signal)
    if n >= MIN_LAYERS and total > SIGNAL_EXPLODING and f > SIGNAL_FACTOR_EXPLODING:
        parts.append(f"the signal ||dL/dh|| grows x{f:.2f} per layer toward the input, "
                     f"{total:.1e} over {n} layers")
        last = _last_finite(m.signal)
        layers += [l for l, s in zip(m.layers, m.signal) if s > 10 * last] or m.layers[:1]
        evidence.update(signal_trend=total, signal_factor=f)
    growth, n_sites = forward_trend(m.spread)
    if n_sites >= MIN_SITES and growth > SPREAD_GROWTH:
        parts.append(f"the forward signal (per-unit spread of the activations) grows {growth:.0f}x "
                     f"from the first activation to the last")
        layers += [m.sites[-1]]
        evidence["spread_trend"] = growth
    for name, steps in m.temporal.items():
        t_total, t_f, t_n = trend(steps)
        if t_n >= 2 and t_total > TEMPORAL_EXPLODING:
            parts.append(f"{name}: ||dL/dx_t|| grows x{t_f:.2f} per time step going back, "
                         f"{t_total:.1e} over {t_n} steps")
            layers.append(name)
            evidence.setdefault("temporal_trend", t_total)
            temporal_hit = True
    if not parts:
        return None
    return Finding("exploding", _unique(layers), evidence, "; ".join(parts),
                   exploding_fixes(m.arch, temporal=temporal_hit,
                                   forward="spread_trend" in evidence))


def _vanishing(m: Measurements) -> Finding | None:
    parts, layers, evidence = [], [], {}
    temporal_hit, depth_hit = False, False
    if m.blocked:
        parts.append(f"the gradient of {len(m.blocked)} layer(s) is exactly zero and no zero "
                     "gate explains it: nothing passes back to them (dead units above them, a "
                     "zero weight, or a non-differentiable step)")
        layers += m.blocked
        evidence["blocked_layers"] = float(len(m.blocked))
        depth_hit = True
    total, f, n = trend(m.signal)
    if n >= MIN_LAYERS and total < SIGNAL_VANISHING:
        parts.append(f"the signal ||dL/dh|| shrinks x{f:.2f} per layer toward the input, to "
                     f"{total:.1e} over {n} layers")
        last = _last_finite(m.signal)
        layers += [l for l, s in zip(m.layers, m.signal) if s < 1e-2 * last] or m.layers[:1]
        evidence.update(signal_trend=total, signal_factor=f)
        depth_hit = True
    growth, n_sites = forward_trend(m.spread)
    if n_sites >= MIN_SITES and growth < SPREAD_COLLAPSE:
        parts.append(f"the forward signal (per-unit spread of the activations) falls to "
                     f"{growth:.1e} from the first activation to the last")
        layers.append(m.sites[-1])
        evidence["spread_trend"] = growth
        depth_hit = True
    sens = _sensitivity(m)
    usable = sens[np.isfinite(sens) & (sens > 0)]
    if len(usable) >= MIN_LAYERS:
        median = float(np.median(usable))
        evidence["median_sensitivity"] = median
        if median < SENSITIVITY_VANISHING:
            parts.append(f"the median layer's ||dL/dW||·||W|| is {median:.1e} of the loss")
            layers += [l for l, s in zip(m.layers, sens) if s < SENSITIVITY_VANISHING]
            depth_hit = True
    for name, steps in m.temporal.items():
        t_total, t_f, t_n = trend(steps)
        if t_n >= 2 and t_total < TEMPORAL_VANISHING:
            parts.append(f"{name}: ||dL/dx_t|| shrinks x{t_f:.2f} per time step going back, to "
                         f"{t_total:.1e} over {t_n} steps")
            layers.append(name)
            evidence.setdefault("temporal_trend", t_total)
            temporal_hit = True
    if not parts:
        return None
    return Finding("vanishing", _unique(layers), evidence, "; ".join(parts),
                   vanishing_fixes(m.arch, depth=depth_hit, temporal=temporal_hit))


def _saturation(m: Measurements) -> list[Finding]:
    sat = {s: v for s, v in zip(m.sites, m.saturated) if math.isfinite(v) and v > SATURATED_FRACTION}
    if not sat:
        return []
    worst = max(sat.values())
    fixes = [Fix("saturated sigmoid/tanh units pass almost no gradient: see where the "
                 "pre-activations sit", "02"),
             Fix("shrink the initial weights to the activation (Xavier/LeCun for tanh and "
                 "sigmoid) so pre-activations start near 0", "07")]
    if not m.arch.batchnorm:
        fixes.append(Fix("normalize the pre-activations with BatchNorm", "08"))
    fixes.append(Fix("use ReLU-family units in the hidden layers", "06"))
    return [Finding("saturation", list(sat), {"max_saturated": worst, "sites": float(len(sat))},
                    f"{len(sat)} sigmoid/tanh site(s) have more than {SATURATED_FRACTION:.0%} of "
                    f"their outputs where the derivative is below 5 % of its peak (worst "
                    f"{worst:.0%})", fixes)]


def _dead(m: Measurements) -> list[Finding]:
    dead = {s: v for s, v in zip(m.sites, m.dead) if math.isfinite(v) and v > DEAD_FRACTION}
    if not dead:
        return []
    worst = max(dead.values())
    fixes = [Fix("use leaky ReLU, ELU or GELU, which pass a gradient for negative inputs", "06"),
             Fix("use He init with zero biases so about half the units start active", "07")]
    if not m.arch.norm:
        fixes.append(Fix("normalize the pre-activations so that units straddle 0", "08"))
    fixes.append(Fix("after training went bad: a too-large step pushed the biases negative; "
                     "lower the learning rate or clip the gradient norm", "10"))
    return [Finding("dead_units", list(dead), {"max_dead": worst, "sites": float(len(dead))},
                    f"{len(dead)} site(s) have more than {DEAD_FRACTION:.0%} of their units at "
                    f"exactly 0 for every example (worst {worst:.0%})", fixes)]


# -- advice -------------------------------------------------------------------------------------
def vanishing_fixes(arch: Architecture, *, depth: bool = True,
                    temporal: bool = False) -> list[Fix]:
    """Fixes for a vanishing gradient that fit ``arch`` (through depth, through time, or both)."""
    fixes: list[Fix] = []
    if depth:
        if arch.saturating:
            fixes.append(Fix("replace sigmoid/tanh in the hidden layers by ReLU-family units "
                             "with He init", "06"))
        fixes.append(Fix("initialize for the activation: He (Var[w] = 2/fan_in) for ReLU, "
                         "Xavier/LeCun for tanh; orthogonal init keeps every singular value at 1",
                         "07"))
        if not arch.batchnorm:
            fixes.append(Fix("add BatchNorm before the activations; LayerNorm is no substitute "
                             "here (lesson 08 measures it failing on the same net)", "08"))
        if not arch.skip:
            fixes.append(Fix("add residual connections: an identity path around each block",
                             "09"))
        if arch.attention:
            fixes.append(Fix("use Pre-LN blocks with a final LayerNorm", "13"))
    if temporal:
        if arch.vanilla_rnn:
            fixes.append(Fix("use a gated cell (LSTM or GRU) instead of a vanilla RNN", "12"))
            fixes.append(Fix("keep the recurrent matrix's spectral radius near 1 (or start a "
                             "ReLU RNN at the identity, IRNN)", "05"))
            fixes.append(Fix("initialize the recurrent matrix orthogonally: every singular value "
                             "is then 1", "07"))
        if arch.lstm:
            fixes.append(Fix("set the LSTM's forget-gate bias to 1 or more, so the cell state "
                             "keeps its gradient from the start", "12"))
        if arch.gru:
            fixes.append(Fix("bias the GRU's update gate toward keeping the state", "12"))
    return fixes


def exploding_fixes(arch: Architecture, *, temporal: bool = False,
                    forward: bool = False) -> list[Fix]:
    """Fixes for an exploding gradient that fit ``arch``."""
    fixes: list[Fix] = []
    plain_batchnorm = arch.batchnorm and not arch.skip and not temporal
    if plain_batchnorm:
        fixes.append(Fix("a deep plain BatchNorm net explodes because of BatchNorm: add residual "
                         "connections, or drop BatchNorm from some layers", "09"))
    if forward or not arch.batchnorm:
        fixes.append(Fix("scale the initial weights to the fan-in (He for ReLU, Xavier for "
                         "tanh): the activations then keep their size layer after layer", "07"))
    if arch.skip and not temporal:
        fixes.append(Fix("scale each residual branch down (x + F(x)/sqrt(L)) or zero-initialise "
                         "its last layer, so that the stream does not grow with depth", "09"))
    if not arch.norm and not temporal:
        fixes.append(Fix("add normalization layers", "08"))
    if temporal:
        fixes.append(Fix("keep the recurrent matrix's largest singular value at or below 1",
                         "05"))
        fixes.append(Fix("initialize the recurrent matrix orthogonally, or smaller", "07"))
        if arch.vanilla_rnn:
            fixes.append(Fix("use a gated cell (LSTM or GRU)", "12"))
    if arch.attention:
        fixes.append(Fix("use Pre-LN blocks with a final LayerNorm and a learning-rate warm-up",
                         "13"))
    fixes.append(Fix("clip the gradient norm to cap the steps while you fix the cause", "10"))
    return fixes


# -- helpers ------------------------------------------------------------------------------------
def _sensitivity(m: Measurements) -> np.ndarray:
    """||dL/dW|| * ||W|| / |loss| per layer (NaN where it is not defined)."""
    if not math.isfinite(m.loss) or m.loss == 0:
        return np.full(len(m.layers), math.nan)
    return m.grad * m.weight / abs(m.loss)


def _last_finite(values: np.ndarray) -> float:
    ok = values[np.isfinite(values) & (values > 0)]
    return float(ok[-1]) if len(ok) else math.nan


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))
