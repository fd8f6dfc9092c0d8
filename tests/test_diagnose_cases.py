"""course_lib.diagnose on the situations practitioners meet (issue 13): what real models take and
return, what is not trained, every activation, cells in a loop, scale-free thresholds, and advice
that fits the model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from course_lib.core import one_thread
from course_lib.data import adding_problem
from course_lib.diagnosis import LESSONS, Report, diagnose
from course_lib.diagnosis_rules import Architecture, exploding_fixes, vanishing_fixes
from course_lib.hooks import ActivationCapture
from course_lib.models import mlp
from course_lib.records import Profile


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():  # small models run faster on one thread of a busy machine
        yield


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(64, 32, generator=g), torch.randint(0, 10, (64,), generator=g)


@pytest.fixture(scope="module")
def image_batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)


def build(**kw) -> nn.Module:
    torch.manual_seed(0)
    return mlp(32, 10, width=64, **kw)


def fixes_of(report: Report) -> list[str]:
    return [str(fix) for f in report.findings for fix in f.fixes]


# -- 1. what real models take and return -------------------------------------------------------
class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(32, 16), nn.Linear(4, 16), nn.Linear(16, 10)

    def forward(self, x, extra, scale: float = 1.0):
        return self.out(torch.relu(self.a(x) + self.b(extra)) * scale)


class TupleOut(nn.Module):
    def __init__(self, as_dict: bool = False):
        super().__init__()
        self.fc, self.out, self.as_dict = nn.Linear(32, 32), nn.Linear(32, 10), as_dict

    def forward(self, x):
        h = torch.relu(self.fc(x))
        logits = self.out(h)
        return {"hidden": h, "logits": logits} if self.as_dict else (logits, h)


def test_tuple_and_dict_inputs_reach_the_model(batch):
    x, y = batch
    extra = torch.randn(64, 4)
    torch.manual_seed(0)
    model = TwoInputs()
    by_tuple = diagnose(model, (x, extra), y)
    by_dict = diagnose(model, {"x": x, "extra": extra, "scale": 1.0}, y)
    assert by_tuple.layers == by_dict.layers == ["a", "b", "out"]
    assert by_tuple.grad_norm.array == pytest.approx(by_dict.grad_norm.array)


@pytest.mark.parametrize("as_dict", [False, True], ids=["tuple", "dict"])
def test_tuple_and_dict_outputs_use_the_logits_and_loss_fn_gets_the_raw_output(batch, as_dict):
    torch.manual_seed(0)
    model = TupleOut(as_dict)
    seen = []

    def loss_fn(output, y):
        seen.append(type(output))
        logits = output["logits"] if as_dict else output[0]
        return F.cross_entropy(logits, y)

    default, custom = diagnose(model, *batch), diagnose(model, *batch, loss_fn=loss_fn)
    assert seen == [dict if as_dict else tuple]
    assert default.loss == pytest.approx(custom.loss) and default.healthy


def test_hugging_face_model_output_with_a_language_model_loss_or_its_own_loss():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16, bos_token_id=0,
        eos_token_id=0)).eval()  # no dropout: both passes see the same network
    ids = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(0))

    def next_token(output, y):  # the loss reads output.logits of a ModelOutput
        return F.cross_entropy(output.logits[:, :-1].reshape(-1, 64), y[:, 1:].reshape(-1))

    custom = diagnose(model, {"input_ids": ids}, ids, loss_fn=next_token)
    own = diagnose(model, {"input_ids": ids, "labels": ids})  # y=None: the model's own loss
    assert custom.loss == pytest.approx(own.loss, rel=1e-5)
    assert custom.healthy and own.healthy and "lm_head" in own.layers


def test_what_cannot_be_handled_says_what_is_required(batch):
    class NoTensor(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            return {"text": "no tensor here", "n": len(x)}

    x, y = batch
    with pytest.raises(ValueError, match="holds no tensor.*loss_fn"):
        diagnose(NoTensor(), x, y)
    with pytest.raises(ValueError, match="holds no loss.*labels"):
        diagnose(build(depth=2, activation="relu"), x)
    with pytest.raises(ValueError, match="tuple or list.*dict"):
        diagnose(build(depth=2, activation="relu"), "x", y)
    with pytest.raises(ValueError, match="same number of examples"):
        diagnose(build(depth=2, activation="relu"), x, y[:3])
    with pytest.raises(ValueError, match="callable"):
        diagnose(build(depth=2, activation="relu"), x, y, loss_fn="mse")
    with pytest.raises(ValueError, match="nn.Module"):
        diagnose("model", x, y)
    with pytest.raises(ValueError, match="no layers with parameters"):
        diagnose(nn.Sequential(nn.ReLU()), x, y)


# -- 2. what is not being trained ----------------------------------------------------------------
def test_frozen_backbone_is_a_note_and_the_head_is_measured(image_batch):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    for p in model.parameters():
        p.requires_grad_(False)
    model.fc = nn.Linear(512, 10)  # the new head, trained
    report = diagnose(model, *image_batch)
    assert report.healthy and report.note_kinds == ["frozen"]
    assert len(report["frozen"].layers) == len(report.layers) - 1
    assert report.status["fc"] == "" and report.grad_norm["fc"] > 0
    assert math.isnan(report.grad_norm["conv1"])  # no gradient is NaN, never 0


def test_zero_init_residual_branches_are_notes_with_exactly_zero_gradients(image_batch):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10, zero_init_residual=True)
    before = [p.detach().clone() for p in model.parameters()]
    report = diagnose(model, *image_batch)
    assert report.healthy and report.note_kinds == ["zero_init_branch"]
    behind = report["zero_init_branch"].layers
    assert "layer1.0.conv1" in behind and "layer1.0.conv2" in behind and "conv1" not in behind
    assert all(report.grad_norm[n] == 0 for n in behind)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), \
        "opening the gates to test them must leave the model as it was"


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update B A, B initialised at zero."""

    def __init__(self, base: nn.Linear, rank: int = 4):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x))


def test_lora_adapters_are_frozen_plus_zero_init_branch_never_vanishing(batch):
    model = build(depth=4, activation="relu", init="kaiming_normal")
    for name in ("fc1", "fc2", "fc3", "fc4"):
        setattr(model, name, LoRALinear(getattr(model, name)))
    model.out.requires_grad_(False)
    report = diagnose(model, *batch)
    assert report.healthy, str(report)
    assert report.note_kinds == ["frozen", "zero_init_branch"]
    assert report["zero_init_branch"].layers == [f"fc{i}.lora_A" for i in range(1, 5)]
    assert all(report.status[f"fc{i}.lora_B"] == "" for i in range(1, 5))


class Gated(nn.Module):
    """Residual blocks whose branch is multiplied by a gate initialised at zero or tiny:
    ``"skipinit"`` (a scalar 0, De & Smith 2020), ``"layerscale"`` (a vector 1e-6, Touvron et
    al. 2021), ``"adaln_zero"`` (a zero Linear that outputs the gate, Peebles & Xie 2023),
    ``"fixup"`` (the branch's last layer at zero, Zhang et al. 2019)."""

    def __init__(self, kind: str, depth: int = 4, width: int = 32):
        super().__init__()
        self.kind = kind
        self.inp = nn.Linear(32, width)
        self.fc1 = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.fc2 = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        if kind == "skipinit":
            self.gates = nn.ParameterList(nn.Parameter(torch.zeros(())) for _ in range(depth))
        elif kind == "layerscale":
            self.gates = nn.ParameterList(nn.Parameter(1e-6 * torch.ones(width))
                                          for _ in range(depth))
        elif kind == "adaln_zero":
            self.mod = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
            for m in self.mod:
                nn.init.zeros_(m.weight), nn.init.zeros_(m.bias)
        elif kind == "fixup":
            for m in self.fc2:
                nn.init.zeros_(m.weight)
        self.out = nn.Linear(width, 10)

    def forward(self, x):
        h = self.inp(x)
        cond = h.mean(0, keepdim=True)
        for i, (a, b) in enumerate(zip(self.fc1, self.fc2)):
            branch = b(torch.relu(a(h)))
            if self.kind in ("skipinit", "layerscale"):
                branch = self.gates[i] * branch
            elif self.kind == "adaln_zero":
                branch = self.mod[i](cond) * branch
            h = h + branch
        return self.out(h)


@pytest.mark.parametrize("kind", ["skipinit", "layerscale", "adaln_zero", "fixup"])
def test_zero_or_tiny_gates_make_a_zero_init_branch_note(batch, kind):
    torch.manual_seed(0)
    report = diagnose(Gated(kind), *batch)
    assert report.healthy, str(report)
    assert report.note_kinds == ["zero_init_branch"], repr(report)
    behind = set(report["zero_init_branch"].layers)
    assert {f"fc1.{i}" for i in range(4)} <= behind and "inp" not in behind
    assert report.architecture.skip


def test_a_none_gradient_is_unused_not_a_vanished_zero(batch):
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = build(depth=3, activation="relu", init="kaiming_normal")
            self.spare = nn.Linear(10, 10)  # built, never called

        def forward(self, x):
            return self.body(x)

    report = diagnose(Unused(), *batch)
    assert report.healthy and report.note_kinds == ["unused"]
    assert report["unused"].layers == ["spare"] and math.isnan(report.grad_norm["spare"])


# -- 3. every activation, every call, cells in a loop -------------------------------------------
def test_functional_sigmoid_net_saturates_like_the_module_version(batch):
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(32 if i == 0 else 64, 64) for i in range(4))
            self.out = nn.Linear(64, 10)
            for layer in self.layers:
                nn.init.normal_(layer.weight, std=1.0)

        def forward(self, x):
            for layer in self.layers:
                x = torch.sigmoid(layer(x))
            return self.out(x)

    torch.manual_seed(0)
    functional = diagnose(Functional(), *batch)
    module = diagnose(build(depth=4, activation="sigmoid", init="normal", std=1.0), *batch)
    assert functional.kinds == module.kinds == ["saturation"]
    assert functional.activations == ["sigmoid", "sigmoid#2", "sigmoid#3", "sigmoid#4"]


def test_an_activation_module_called_twice_is_measured_over_both_calls(image_batch):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    calls = []
    with ActivationCapture(model, lambda site, kind, out: calls.append((site, out)),
                           functional=False):
        with torch.no_grad():
            model(image_batch[0])
    both = torch.cat([o for s, o in calls if s == "layer1.0.relu"])
    assert len([s for s, _ in calls if s == "layer1.0.relu"]) == 2
    report = diagnose(model, *image_batch)
    assert report.profile("act_mean")["layer1.0.relu"] == pytest.approx(both.mean().item(),
                                                                        rel=1e-4)


class CellLoop(nn.Module):
    def __init__(self, cell, hidden=16):
        super().__init__()
        self.cell, self.head = cell(2, hidden), nn.Linear(hidden, 1)

    def forward(self, x):
        h = None
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
        return self.head(h[0] if isinstance(h, tuple) else h)


@pytest.mark.parametrize("cell", [nn.RNNCell, nn.LSTMCell, nn.GRUCell])
def test_cells_called_in_a_loop_get_the_temporal_analysis(cell):
    x, y = adding_problem(32, 8, seed=0)
    torch.manual_seed(0)
    report = diagnose(CellLoop(cell), x, y)
    steps = report.temporal["cell"]
    assert isinstance(steps, Profile) and steps.layers == [f"t{t}" for t in range(1, 9)]
    assert report.healthy, str(report)
    assert not x.requires_grad  # the caller's input is untouched


def test_a_long_loop_of_a_vanilla_cell_vanishes_through_time():
    x, y = adding_problem(32, 100, seed=0)
    torch.manual_seed(0)
    report = diagnose(CellLoop(nn.RNNCell), x, y)
    assert report.kinds == ["vanishing"]
    assert report["vanishing"].evidence["temporal_trend"] < 1e-10
    assert report["vanishing"].layers == ["cell"]


def test_multihead_attention_out_proj_is_folded_into_its_layer():
    class Attend(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(8, 32)
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
            self.classifier = nn.Linear(32, 3)

        def forward(self, x):
            h = self.embed(x)
            h = h + self.attn(h, h, h, need_weights=False)[0]
            return self.classifier(h.mean(1))

    torch.manual_seed(0)
    x, y = torch.randn(16, 5, 8), torch.randint(0, 3, (16,))
    report = diagnose(Attend(), x, y)
    assert report.layers == ["embed", "attn", "classifier"]
    assert all(math.isfinite(v) for v in report.signal_norm.array)
    assert report.healthy and report.architecture.attention


# -- 4. scale-free thresholds ---------------------------------------------------------------------
@pytest.mark.parametrize("factor", [1e-3, 1e3])
def test_a_scaled_loss_gives_the_same_verdicts(batch, factor):
    for kw, kinds in ((dict(depth=10, activation="relu", init="kaiming_normal"), []),
                      (dict(depth=10, activation="sigmoid"), ["vanishing"]),
                      (dict(depth=10, activation="relu", init="normal", std=1.0), ["exploding"])):
        report = diagnose(build(**kw), *batch,
                          loss_fn=lambda out, y: factor * F.cross_entropy(out, y))
        assert report.kinds == kinds, f"{kw}, loss x{factor}: {report}"


def test_a_summed_loss_over_a_big_batch_is_not_exploding():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(1024, 32, generator=g), torch.randint(0, 10, (1024,), generator=g)
    report = diagnose(build(depth=6, activation="relu", init="kaiming_normal"), x, y,
                      loss_fn=lambda out, t: F.cross_entropy(out, t, reduction="sum"))
    assert report.healthy, str(report)


def test_a_model_trained_to_a_small_loss_is_not_vanishing(batch):
    x, y = batch
    model = build(depth=3, activation="relu", init="kaiming_normal")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    report = diagnose(model, x, y)
    assert report.loss < 1e-2 and report.healthy, str(report)


def test_the_lesson_10_net_that_overflows_in_three_steps_is_exploding(batch):
    model = build(depth=10, activation="relu", init="normal", std=1.5 * math.sqrt(2 / 64))
    report = diagnose(model, *batch)
    assert report.kinds == ["exploding"]
    assert report["exploding"].evidence["spread_trend"] > 10


def test_nonfinite_weights_are_exploding(batch):
    model = build(depth=3, activation="relu")
    with torch.no_grad():
        model.fc1.weight[0, 0] = float("inf")
    report = diagnose(model, *batch)
    assert report.kinds[0] == "exploding" and not math.isfinite(report.loss)


# -- 5. advice that is right and fits the model -----------------------------------------------
def test_every_fix_names_a_lesson_of_the_final_numbering():
    assert LESSONS["12"] == "12 · LSTM and GRU" and LESSONS["13"] == "13 · Transformers"
    assert "14" not in LESSONS and "15" not in LESSONS
    for arch in (Architecture(), Architecture(skip=True, batchnorm=True, norm=True),
                 Architecture(vanilla_rnn=True, lstm=True, gru=True, attention=True,
                              saturating=True)):
        for fix in vanishing_fixes(arch, temporal=True) + exploding_fixes(arch, temporal=True):
            assert fix.lesson in LESSONS


def test_recurrent_vanishing_points_to_lessons_05_and_07_and_never_to_truncated_bptt():
    x, y = adding_problem(32, 100, seed=0)
    torch.manual_seed(0)

    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = nn.RNN(2, 16, batch_first=True), nn.Linear(16, 1)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    report = diagnose(Seq(), x, y)
    lessons = {fix.lesson for fix in report["vanishing"].fixes}
    assert {"05", "07", "12"} <= lessons and "03" not in lessons
    text = " ".join(fixes_of(report)).lower()
    assert "orthogonal" in text and "truncated" not in text and "bptt" not in text


def test_an_lstm_is_told_about_its_forget_gate_not_to_use_gates():
    x, y = adding_problem(32, 100, seed=0)
    torch.manual_seed(0)

    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = nn.LSTM(2, 16, batch_first=True), nn.Linear(16, 1)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    report = diagnose(Seq(), x, y)
    assert report.kinds == ["vanishing"]  # at default init the LSTM's gradient decays in time
    text = " ".join(fixes_of(report))
    assert "forget-gate bias" in text and "gated cell" not in text


def test_an_exploding_recurrent_matrix_points_to_lessons_05_and_07_and_clipping():
    x, y = adding_problem(32, 30, seed=0)
    torch.manual_seed(0)
    model = CellLoop(nn.RNNCell, hidden=32)
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(32, 32))
        model.cell.weight_hh.copy_(3.0 * q)
    report = diagnose(model, x, y)
    assert report.kinds == ["exploding"]
    assert {"05", "07", "10", "12"} <= {fix.lesson for fix in report["exploding"].fixes}


def test_an_over_scaled_init_is_told_to_fix_the_init_first_not_to_add_residuals(batch):
    report = diagnose(build(depth=10, activation="relu", init="normal",
                            std=1.5 * math.sqrt(2 / 64)), *batch)
    first = report["exploding"].fixes[0]
    assert first.lesson == "07" and "residual" not in " ".join(fixes_of(report))


def test_plain_batchnorm_explosion_points_to_batchnorm_and_residual_connections(batch):
    report = diagnose(build(depth=50, activation="relu", norm="batch", init="kaiming_normal"),
                      *batch)
    assert report.kinds == ["exploding"]
    first = report["exploding"].fixes[0]
    assert first.lesson == "09" and "BatchNorm" in first.text and "residual" in first.text
    assert not any("add normalization" in s for s in fixes_of(report))


def test_vanishing_advice_never_offers_layernorm_as_batchnorm_s_equal(batch):
    report = diagnose(build(depth=10, activation="sigmoid"), *batch)
    text = " ".join(fixes_of(report))
    assert "BatchNorm/LayerNorm" not in text and "or LayerNorm" not in text
    assert {"06", "07", "08", "09"} <= {fix.lesson for fix in report["vanishing"].fixes}


def test_a_residual_net_is_not_told_to_add_residual_connections(batch):
    report = diagnose(build(depth=10, activation="relu", residual=True, init="normal", std=1.0),
                      *batch)
    assert report.kinds == ["exploding"] and report.architecture.skip
    text = " ".join(fixes_of(report))
    assert "add residual connections" not in text and "residual branch" in text


def test_transformer_specific_fixes_point_to_lesson_13():
    fixes = exploding_fixes(Architecture(skip=True, norm=True, attention=True))
    assert any(f.lesson == "13" and "warm-up" in f.text and "Pre-LN" in f.text for f in fixes)


# -- 7. readable ---------------------------------------------------------------------------------
def test_report_reads_short_in_repr_and_as_tables_in_text_and_html(image_batch):
    torch.manual_seed(0)
    report = diagnose(torchvision.models.resnet18(num_classes=10), *image_batch)
    assert repr(report).startswith("Report(healthy;") and len(repr(report)) < 120
    text, page = str(report), report._repr_html_()
    assert "||dL/dh||" in text and "…" in text and len(text.splitlines()) < 40
    assert page.count("<table>") == 2 and "healthy" in page and len(page) < 6000
    for stat in ("grad_norm", "signal_norm", "weight_norm", "grad_to_weight", "sensitivity",
                 "act_spread", "saturated", "dead"):
        assert isinstance(getattr(report, stat), Profile)
    assert report.grad_norm.layers == report.layers
    with pytest.raises(ValueError, match="valid"):
        report.profile("nope")
    with pytest.raises(KeyError, match="vanishing"):
        report["vanishing"]
