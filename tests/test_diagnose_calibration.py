"""Calibration of course_lib.diagnose: a zoo of real architectures at random init (torchvision,
timm, Hugging Face transformers, built from small configs, no weights, no network) must never read
vanishing or exploding, and every planted defect must be found. The suite prints precision and
recall per finding kind (run with ``-s`` to see it even when it passes); docs/diagnose.md holds
the calibration table these models give.

Every model is built and diagnosed once per session, on one thread (tiny models run faster on
one thread of a busy 2-core machine than on two).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable

import pytest
import timm
import torch
import torchvision
import transformers
from torch import nn

from course_lib.convnets import cnn
from course_lib.core import one_thread
from course_lib.data import adding_problem
from course_lib.diagnosis import KINDS, diagnose
from course_lib.models import mlp

tv = torchvision.models
T = transformers
Builder = Callable[[], tuple]


def images(n: int = 8, side: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, side, side, generator=g), torch.randint(0, 10, (n,), generator=g)


def tokens(n: int = 4, length: int = 16, vocab: int = 128) -> torch.Tensor:
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))


def features(n: int = 64, d: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, d, generator=g), torch.randint(0, 10, (n,), generator=g)


# -- the zoo: real architectures, small configs -------------------------------------------------
def _tv_convnext():
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt
    return ConvNeXt([CNBlockConfig(32, 64, 1), CNBlockConfig(64, 128, 1),
                     CNBlockConfig(128, None, 1)], num_classes=10)


def _tv_vit():
    from torchvision.models.vision_transformer import VisionTransformer
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                             hidden_dim=64, mlp_dim=128, num_classes=10)


def _tv_swin():
    from torchvision.models.swin_transformer import SwinTransformer
    return SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[1, 1], num_heads=[2, 4],
                           window_size=[4, 4], num_classes=10)


def _tv_efficientnet():
    from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf
    setting, last = _efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.25)
    return EfficientNet(setting, 0.2, last_channel=last, num_classes=10)


def _tv_regnet():
    from torchvision.models.regnet import BlockParams, RegNet
    return RegNet(BlockParams.from_init_params(depth=4, w_0=16, w_a=8, w_m=2.0, group_width=8),
                  num_classes=10)


def _timm_efficientnet():
    from timm.models.efficientnet import _gen_efficientnet
    return _gen_efficientnet("efficientnet_b0", channel_multiplier=0.25, depth_multiplier=0.25,
                             pretrained=False, num_classes=10)


def _timm_nf_resnet():  # SkipInit: every residual branch behind a gain initialised at 0
    from timm.models.nfnet import NfCfg, NormFreeNet
    return NormFreeNet(NfCfg(depths=(1, 1, 1, 1), channels=(64, 128, 256, 512),
                             stem_type="7x7_pool", stem_chs=32, bottle_ratio=0.25,
                             act_layer="relu", skipinit=True), num_classes=10)


def _hf_lm(model: nn.Module) -> tuple:
    ids = tokens()
    return model, {"input_ids": ids}, ids


SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=2, vocab_size=128,
             max_position_embeddings=40)

ZOO: dict[str, Builder] = {
    "torchvision resnet18": lambda: (tv.resnet18(num_classes=10), *images()),
    "torchvision resnet50 (full size)": lambda: (tv.resnet50(num_classes=10), *images(8, 64)),
    "torchvision resnet (bottleneck)": lambda: (
        tv.resnet.ResNet(tv.resnet.Bottleneck, [1, 1, 1, 1], num_classes=10, width_per_group=16),
        *images()),
    "torchvision resnet18 zero_init_residual": lambda: (
        tv.resnet18(num_classes=10, zero_init_residual=True), *images()),
    "torchvision mobilenet_v3_small": lambda: (tv.mobilenet_v3_small(num_classes=10,
                                                                    width_mult=0.5), *images()),
    "torchvision mobilenet_v2": lambda: (tv.mobilenet_v2(num_classes=10, width_mult=0.25),
                                         *images()),
    "torchvision densenet": lambda: (tv.densenet.DenseNet(growth_rate=12, block_config=(2, 2, 2),
                                                          num_init_features=16, num_classes=10),
                                     *images()),
    "torchvision densenet121 (full size)": lambda: (tv.densenet121(num_classes=10), *images()),
    "torchvision squeezenet1_1": lambda: (tv.squeezenet1_1(num_classes=10), *images(8, 64)),
    "torchvision shufflenet_v2": lambda: (tv.shufflenet_v2_x0_5(num_classes=10), *images()),
    "torchvision mnasnet": lambda: (tv.mnasnet0_5(num_classes=10), *images()),
    "torchvision convnext": lambda: (_tv_convnext(), *images()),
    "torchvision vit": lambda: (_tv_vit(), *images()),
    "torchvision swin": lambda: (_tv_swin(), *images()),
    "torchvision efficientnet": lambda: (_tv_efficientnet(), *images()),
    "torchvision regnet": lambda: (_tv_regnet(), *images()),
    "timm resnet50 (zero_init_last)": lambda: (
        timm.create_model("resnet50", layers=[1, 1, 1, 1], num_classes=10), *images()),
    "timm resnetv2 (pre-activation)": lambda: (
        timm.create_model("resnetv2_50", layers=[1, 1, 1, 1], num_classes=10), *images()),
    "timm convnext (layer scale 1e-6)": lambda: (
        timm.create_model("convnext_atto", depths=(1, 1, 1, 1), dims=(32, 48, 64, 96),
                          num_classes=10), *images()),
    "timm vit": lambda: (timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8,
                                           depth=2, embed_dim=64, num_heads=2, num_classes=10),
                         *images()),
    "timm deit3 (layer scale)": lambda: (
        timm.create_model("deit3_small_patch16_224", img_size=32, patch_size=8, depth=2,
                          embed_dim=64, num_heads=2, num_classes=10), *images()),
    "timm efficientnet": lambda: (_timm_efficientnet(), *images()),
    "timm mobilenetv3": lambda: (timm.create_model("mobilenetv3_small_050", num_classes=10),
                                 *images()),
    "timm nf_resnet (SkipInit)": lambda: (_timm_nf_resnet(), *images()),
    "timm swin": lambda: (timm.create_model("swin_tiny_patch4_window7_224", img_size=32,
                                            patch_size=4, window_size=4, embed_dim=32,
                                            depths=(1, 1), num_heads=(2, 4), num_classes=10),
                          *images()),
    "timm regnet": lambda: (timm.create_model("regnetx_002", num_classes=10), *images()),
    "timm ghostnet": lambda: (timm.create_model("ghostnet_050", num_classes=10), *images()),
    "timm cait (layer scale)": lambda: (
        timm.create_model("cait_xxs24_224", img_size=32, patch_size=8, depth=2,
                          depth_token_only=1, embed_dim=64, num_heads=2, num_classes=10),
        *images()),
    "transformers gpt2": lambda: _hf_lm(T.GPT2LMHeadModel(T.GPT2Config(
        n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=40, bos_token_id=0,
        eos_token_id=0))),
    "transformers llama": lambda: _hf_lm(T.LlamaForCausalLM(T.LlamaConfig(
        num_hidden_layers=2, num_key_value_heads=2, **SMALL))),
    "transformers bert (classification)": lambda: (
        T.BertForSequenceClassification(T.BertConfig(num_hidden_layers=2, num_labels=3,
                                                     **SMALL)),
        {"input_ids": tokens(), "attention_mask": torch.ones(4, 16, dtype=torch.long)},
        torch.randint(0, 3, (4,), generator=torch.Generator().manual_seed(0))),
    "transformers roberta (masked LM)": lambda: _hf_lm(T.RobertaForMaskedLM(T.RobertaConfig(
        num_hidden_layers=2, **SMALL))),
    "transformers t5": lambda: (
        T.T5ForConditionalGeneration(T.T5Config(num_layers=2, num_decoder_layers=2, d_model=64,
                                                d_ff=128, num_heads=2, d_kv=32, vocab_size=128,
                                                decoder_start_token_id=0)),
        {"input_ids": tokens(), "decoder_input_ids": tokens()}, tokens()),
    "transformers vit": lambda: (
        T.ViTForImageClassification(T.ViTConfig(image_size=32, patch_size=8, num_hidden_layers=2,
                                                 hidden_size=64, intermediate_size=128,
                                                 num_attention_heads=2, num_labels=10)),
        {"pixel_values": images()[0]}, images()[1]),
    "transformers gpt_neox": lambda: _hf_lm(T.GPTNeoXForCausalLM(T.GPTNeoXConfig(
        num_hidden_layers=2, **SMALL))),
}


# -- planted defects ----------------------------------------------------------------------------
class FunctionalMLP(nn.Module):
    """A learner-style MLP that calls its activation as a function in ``forward``."""

    def __init__(self, depth: int, fn: Callable, std: float | None = None,
                 bias: float | None = None, width: int = 64) -> None:
        super().__init__()
        self.fn = fn
        self.layers = nn.ModuleList(nn.Linear(32 if i == 0 else width, width)
                                    for i in range(depth))
        self.out = nn.Linear(width, 10)
        for layer in self.layers:
            if std is not None:
                nn.init.normal_(layer.weight, std=std)
            if bias is not None:
                nn.init.constant_(layer.bias, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = self.fn(layer(x))
        return self.out(x)


class Sequence(nn.Module):
    """A recurrent layer, then a head on the last step."""

    def __init__(self, kind: type[nn.RNNBase], hidden: int = 32, **kw) -> None:
        super().__init__()
        self.rnn = kind(2, hidden, batch_first=True, **kw)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class CellLoop(nn.Module):
    """A cell called once per time step in ``forward``."""

    def __init__(self, cell: type[nn.RNNCellBase], hidden: int = 32, **kw) -> None:
        super().__init__()
        self.cell = cell(2, hidden, **kw)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = None
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
        return self.head(h[0] if isinstance(h, tuple) else h)


def _mlp(**kw) -> nn.Module:
    return mlp(32, 10, width=64, **kw)


def _dead_relu() -> nn.Module:
    model = _mlp(depth=5, activation="relu", init="kaiming_normal")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.out_features == 64:
                module.bias.fill_(-3.0)  # what a too-large learning-rate step can leave behind
    return model


def _recurrent_radius(model: nn.Module, radius: float) -> nn.Module:
    """The recurrent matrix set to ``radius`` times an orthogonal matrix."""
    rnn = getattr(model, "rnn", None) or model.cell
    weight = rnn.weight_hh_l0 if hasattr(rnn, "weight_hh_l0") else rnn.weight_hh
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(weight.shape[0], weight.shape[0]))
        weight.copy_(radius * q)
    return model


HE = math.sqrt(2 / 64)
#: name -> (builder, the kinds that must be found, other kinds that may be found)
DEFECTS: dict[str, tuple[Builder, set[str], set[str]]] = {
    "sigmoid MLP, depth 10, default init": (
        lambda: (_mlp(depth=10, activation="sigmoid"), *features()), {"vanishing"}, set()),
    "functional torch.sigmoid MLP, depth 10": (
        lambda: (FunctionalMLP(10, torch.sigmoid), *features()), {"vanishing"}, set()),
    "ReLU + Xavier, depth 30 (trap 1)": (
        lambda: (_mlp(depth=30, activation="relu", init="xavier_normal"), *features()),
        {"vanishing"}, set()),
    "tanh, Var 0.5/fan_in, depth 30 (trap 2)": (
        lambda: (_mlp(depth=30, activation="tanh", init="normal", std=math.sqrt(0.5 / 64)),
                 *features()), {"vanishing"}, set()),
    "functional torch.tanh, tiny init 0.03": (
        lambda: (FunctionalMLP(12, torch.tanh, std=0.03), *features()), {"vanishing"}, set()),
    "plain CNN, depth 14, default init": (
        lambda: (cnn(3, 10, depth=14, channels=16, init="default"), *images(16, 8)),
        {"vanishing"}, set()),
    "ReLU, N(0, 1) weights, depth 10": (
        lambda: (_mlp(depth=10, activation="relu", init="normal", std=1.0), *features()),
        {"exploding"}, set()),
    "ReLU, 1.5 x He, depth 10 (lesson 10)": (
        lambda: (_mlp(depth=10, activation="relu", init="normal", std=1.5 * HE), *features()),
        {"exploding"}, set()),
    "functional torch.relu, 2 x He": (
        lambda: (FunctionalMLP(10, torch.relu, std=2 * HE), *features()), {"exploding"}, set()),
    "plain BatchNorm MLP, depth 50": (
        lambda: (_mlp(depth=50, activation="relu", norm="batch", init="kaiming_normal"),
                 *features()), {"exploding"}, set()),
    "plain BatchNorm CNN, depth 40": (
        lambda: (cnn(3, 10, depth=40, channels=16, norm="batch"), *images(16, 8)),
        {"exploding"}, set()),
    "sigmoid, N(0, 1) weights, depth 4": (
        lambda: (_mlp(depth=4, activation="sigmoid", init="normal", std=1.0), *features()),
        {"saturation"}, set()),
    "functional torch.tanh, N(0, 1) weights": (
        lambda: (FunctionalMLP(4, torch.tanh, std=1.0), *features()), {"saturation"}, set()),
    "ReLU, biases -3": (lambda: (_dead_relu(), *features()), {"dead_units"}, {"vanishing"}),
    "functional F.relu, biases -3": (
        lambda: (FunctionalMLP(5, nn.functional.relu, std=HE, bias=-3.0), *features()),
        {"dead_units"}, {"vanishing"}),
    "vanilla RNN, 100 steps": (
        lambda: (Sequence(nn.RNN), *adding_problem(32, 100, seed=0)), {"vanishing"}, set()),
    "RNNCell loop, 100 steps": (
        lambda: (CellLoop(nn.RNNCell), *adding_problem(32, 100, seed=0)), {"vanishing"}, set()),
    "ReLU RNN, recurrent radius 2, 30 steps": (
        lambda: (_recurrent_radius(Sequence(nn.RNN, nonlinearity="relu"), 2.0),
                 *adding_problem(32, 30, seed=0)), {"exploding"}, set()),
    "tanh RNNCell loop, recurrent radius 3, 30 steps": (
        lambda: (_recurrent_radius(CellLoop(nn.RNNCell), 3.0), *adding_problem(32, 30, seed=0)),
        {"exploding"}, set()),
}


# -- one session: build and diagnose everything once -------------------------------------------
@pytest.fixture(scope="module")
def results():
    transformers.logging.set_verbosity_error()
    out, seconds = {}, time.perf_counter()
    with one_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for group, builders in (("zoo", ZOO), ("defect", {k: v[0] for k, v in DEFECTS.items()})):
            for name, build in builders.items():
                torch.manual_seed(0)
                model, x, y = build()
                out[name] = (group, diagnose(model, x, y))
    return out, time.perf_counter() - seconds


def scores(results: dict) -> dict[str, dict[str, float]]:
    """Precision and recall per kind: a finding on a zoo model is a false positive; on a defect,
    one it neither requires nor allows."""
    table = {}
    for kind in KINDS:
        tp = fp = fn = 0
        for name, (group, report) in results.items():
            required, allowed = (DEFECTS[name][1], DEFECTS[name][2]) if group == "defect" \
                else (set(), set())
            found = kind in report.kinds
            tp += found and kind in required
            fp += found and kind not in required | allowed
            fn += (not found) and kind in required
        table[kind] = {"precision": tp / (tp + fp) if tp + fp else math.nan,
                       "recall": tp / (tp + fn) if tp + fn else math.nan,
                       "tp": tp, "fp": fp, "fn": fn}
    return table


def test_the_zoo_and_the_defects_are_big_enough():
    assert len(ZOO) >= 25
    assert len(DEFECTS) >= 15
    sources = {name.split()[0] for name in ZOO}
    assert sources == {"torchvision", "timm", "transformers"}
    assert {k for _, required, _ in DEFECTS.values() for k in required} == set(KINDS)


@pytest.mark.parametrize("name", list(ZOO))
def test_real_architecture_at_random_init_is_neither_vanishing_nor_exploding(results, name):
    report = results[0][name][1]
    assert not {"vanishing", "exploding"} & set(report.kinds), str(report)
    assert report.healthy, str(report)


@pytest.mark.parametrize("name", list(DEFECTS))
def test_planted_defect_is_found(results, name):
    report = results[0][name][1]
    required, allowed = DEFECTS[name][1], DEFECTS[name][2]
    assert required <= set(report.kinds), str(report)
    assert set(report.kinds) <= required | allowed, str(report)


def test_zero_initialised_gates_in_the_zoo_are_notes_not_problems(results):
    for name in ("torchvision resnet18 zero_init_residual", "timm resnet50 (zero_init_last)",
                 "timm convnext (layer scale 1e-6)", "timm nf_resnet (SkipInit)",
                 "torchvision vit"):
        report = results[0][name][1]
        assert report.note_kinds == ["zero_init_branch"], f"{name}: {report!r}"
        assert "zero_init_branch" in report.status.values()


def test_precision_and_recall_are_one_for_every_kind(results, capsys):
    table = scores(results[0])
    lines = [f"diagnose calibration: {len(ZOO)} zoo models, {len(DEFECTS)} planted defects, "
             f"built and diagnosed in {results[1]:.1f} s",
             f"{'kind':12s} {'precision':>9s} {'recall':>7s}   tp  fp  fn"]
    lines += [f"{k:12s} {v['precision']:9.2f} {v['recall']:7.2f}  {v['tp']:3d} {v['fp']:3d} "
              f"{v['fn']:3d}" for k, v in table.items()]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    for kind, v in table.items():
        assert v["precision"] == 1.0 and v["recall"] == 1.0, f"{kind}: {v}"


def calibration_table() -> str:
    """The calibration table of docs/diagnose.md, as Markdown: every model, the numbers each rule
    compares with its threshold, and the verdict (``python tests/test_diagnose_calibration.py``)."""
    def fmt(v: float) -> str:
        return "–" if not math.isfinite(v) else f"{v:.1e}" if abs(math.log10(v or 1)) > 2 \
            else f"{v:.2f}"

    rows = ["| model | signal trend (factor/layer) | forward spread | median sensitivity | "
            "temporal | verdict | notes |", "|---|---|---|---|---|---|---|"]
    with one_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.logging.set_verbosity_error()
        for group, builders in (("zoo", ZOO), ("defect", {k: v[0] for k, v in DEFECTS.items()})):
            for name, build in builders.items():
                torch.manual_seed(0)
                r = diagnose(*build())
                m = r.measures
                signal = f"{fmt(m['signal_trend'])} ({fmt(m['signal_factor'])})" \
                    if math.isfinite(m["signal_trend"]) else "–"
                rows.append(f"| {name} | {signal} | {fmt(m['spread_trend'])} | "
                            f"{fmt(m['median_sensitivity'])} | {fmt(m['temporal_trend'])} | "
                            f"{', '.join(r.kinds) or 'healthy'} | {', '.join(r.note_kinds)} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(calibration_table())
