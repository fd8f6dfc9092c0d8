"""Small Transformers for the course: the block in its two orders, residual fixes, rank collapse.

- :class:`Block`: one encoder block, self-attention then a feed-forward net, each on a residual
  branch, with LayerNorm after the sum (``order="post"``, Vaswani et al. 2017), at the head of each
  branch (``"pre"``, GPT-2 and most models since), or nowhere (``"none"``). Its submodules carry
  the names of ``nn.TransformerEncoderLayer`` (``self_attn``, ``linear1``, ``linear2``,
  ``norm1``, ``norm2``), so that layer's state dict loads into a block and the two compute the
  same function (``tests/test_transformer.py`` checks both orders).
- :func:`transformer`: token embedding, fixed sinusoidal positions, ``block1`` ... ``blockL``, a
  final LayerNorm in the Pre-LN order, a linear ``head``; logits of shape (n, T, classes).
  ``fix`` builds the deeper fixes: DeepNorm (Wang et al. 2022), ReZero (Bachlechner et al. 2020),
  Admin (Liu et al. 2020, completed by :func:`admin_init_` on a batch).
- :func:`per_block`: one sub-layer's values (say ``linear2``, Xiong et al.'s W^{FFN2}) out of a
  per-layer :class:`~course_lib.records.Profile`, one value per block.
- :func:`rank_collapse`: the relative residual of the rank-one approximation ``1 x^T`` of the
  token representations after every block (Dong et al. 2021); :func:`stream_rms`: the size of
  the residual stream after every block; both from :func:`block_outputs`;
  :func:`attention_gradients`: ||dL/dW|| of the query, key and value projections apart.
- :func:`output_change`: how much Adam's first step changes the output (Liu et al. 2020).
- :func:`token_accuracy`; :func:`linear_warmup` (a scheduler for :func:`course_lib.train.fit`);
  :func:`noam_rate` (the schedule of Vaswani et al. 2017); :func:`power_law_exponent`.

The task data come from :func:`course_lib.data.sequence_task`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from course_lib.core import check_bool, check_choice, check_float, check_positive_int
from course_lib.gradients import geometric_fit
from course_lib.hooks import Hooks
from course_lib.records import Profile

#: Where a block puts its LayerNorms: after the residual sum, at the head of each branch, nowhere.
ORDERS: tuple[str, ...] = ("post", "pre", "none")
#: The deeper fixes :func:`transformer` builds (``None``: the plain block).
FIXES: tuple[str | None, ...] = (None, "deepnet", "rezero", "admin")
#: Initializations :func:`transformer` knows: ``xavier`` (Xavier-uniform weights, zero biases,
#: the setting of Xiong et al. 2020) and ``default`` (PyTorch's own init of each module).
INITS: tuple[str, ...] = ("xavier", "default")
#: The feed-forward activations (those of ``nn.TransformerEncoderLayer``).
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}


class Block(nn.Module):
    """One Transformer encoder block (no dropout), batch first: (n, T, width) in and out.

    With ``a`` the residual scale and ``g`` the branch gain (1 unless ReZero), the sub-layers
    compute, for ``F`` the self-attention and then the feed-forward net
    ``linear2(act(linear1(.)))``:

    - ``order="post"``: ``x <- LN(a x + g F(x))`` (Vaswani et al. 2017; DeepNorm, Admin);
    - ``order="pre"``: ``x <- a x + g F(LN(x))``;
    - ``order="none"``: ``x <- a x + g F(x)`` (ReZero, with ``g`` a learned scalar that starts
      at 0, one per block).

    ``skip=False`` drops the ``a x`` term (no residual connection), ``mlp=False`` the
    feed-forward sub-layer: an attention-only block, the setting of Dong et al. (2021).

    Args:
        width: model width d; ``heads`` must divide it.
        ff_width: hidden width of the feed-forward net (default 4 * width).
        residual_scale: ``a`` for both sub-layers (DeepNorm's alpha); :func:`admin_init_` sets a
            value per sub-layer. Kept in the buffer ``residual_scale`` (two entries).
        rezero: multiply both branches by one learned scalar gain that starts at 0.
    """

    def __init__(self, width: int, heads: int, ff_width: int | None = None, *,
                 order: str = "pre", mlp: bool = True, skip: bool = True,
                 residual_scale: float = 1.0, rezero: bool = False,
                 activation: str = "relu") -> None:
        super().__init__()
        width = check_positive_int("width", width)
        heads = check_positive_int("heads", heads)
        if width % heads:
            raise ValueError(f"heads must divide width: width {width}, heads {heads}; valid "
                             f"heads: {[h for h in range(1, width + 1) if width % h == 0]}")
        ff_width = 4 * width if ff_width is None else check_positive_int("ff_width", ff_width)
        check_choice("order", order, ORDERS)
        check_choice("activation", activation, ACTIVATIONS)
        self.order = order
        self.mlp = check_bool("mlp", mlp)
        self.skip = check_bool("skip", skip)
        self.rezero = check_bool("rezero", rezero)
        scale = check_float("residual_scale", residual_scale, positive=True)
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=0.0, batch_first=True)
        if order != "none":
            self.norm1 = nn.LayerNorm(width)
        if mlp:
            self.linear1 = nn.Linear(width, ff_width)
            self.activation = ACTIVATIONS[activation]()
            self.linear2 = nn.Linear(ff_width, width)
            if order != "none":
                self.norm2 = nn.LayerNorm(width)
        self.register_buffer("residual_scale", torch.full((2,), scale))
        if rezero:  # one gain for both sub-layers, as in ReZero's own Transformer layer
            self.gain = nn.Parameter(torch.zeros(1))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention branch F_1 (no normalization, no residual)."""
        return self.self_attn(x, x, x, need_weights=False)[0]

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The feed-forward branch F_2 (no normalization, no residual)."""
        return self.linear2(self.activation(self.linear1(x)))

    def _sublayer(self, i: int, x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor],
                  norm: nn.Module | None) -> torch.Tensor:
        inner = norm(x) if (self.order == "pre" and norm is not None) else x
        out = branch(inner)
        if self.rezero:
            out = self.gain * out
        if self.skip:
            out = self.residual_scale[i] * x + out
        return norm(out) if (self.order == "post" and norm is not None) else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._sublayer(0, x, self.attention, getattr(self, "norm1", None))
        if self.mlp:
            x = self._sublayer(1, x, self.feed_forward, getattr(self, "norm2", None))
        return x

    def extra_repr(self) -> str:
        return (f"order={self.order!r}, mlp={self.mlp}, skip={self.skip}, rezero={self.rezero}, "
                f"residual_scale={[round(float(a), 4) for a in self.residual_scale]}")


def sinusoidal_positions(seq_len: int, width: int) -> torch.Tensor:
    """The fixed position encodings of Vaswani et al. (2017), shape (seq_len, width):
    ``sin(p / 10000^(2i/d))`` in even columns, ``cos`` in odd ones."""
    seq_len = check_positive_int("seq_len", seq_len)
    width = check_positive_int("width", width, minimum=2)
    pos = torch.arange(seq_len, dtype=torch.float64)[:, None]
    freq = torch.pow(10000.0, -torch.arange(0, width, 2, dtype=torch.float64) / width)
    table = torch.zeros(seq_len, width, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: width // 2])
    return table.float()


class Transformer(nn.Module):
    """Token embedding + sinusoidal positions, ``block1`` ... ``blockL``, a final LayerNorm
    (``norm_f``, Pre-LN order only) and a linear ``head``. Input: token ids (n, T) with
    T <= ``max_len``; output: logits (n, T, classes). Build it with :func:`transformer`."""

    def __init__(self, vocab: int, classes: int, blocks: Sequence[Block], width: int,
                 max_len: int, final_norm: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.register_buffer("positions", sinusoidal_positions(max_len, width),
                             persistent=False)
        for i, block in enumerate(blocks, start=1):
            self.add_module(f"block{i}", block)
        self.norm_f = nn.LayerNorm(width) if final_norm else None
        self.head = nn.Linear(width, classes)

    @property
    def blocks(self) -> list[Block]:
        """The blocks, input to output."""
        return [m for m in self.children() if isinstance(m, Block)]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 2 or torch.is_floating_point(tokens):
            raise ValueError(f"tokens must be integer ids of shape (n, T), got "
                             f"{tuple(tokens.shape)} {tokens.dtype}")
        if tokens.shape[1] > len(self.positions):
            raise ValueError(f"sequences of length {tokens.shape[1]} exceed max_len "
                             f"{len(self.positions)}")
        h = self.embed(tokens) + self.positions[: tokens.shape[1]]
        for block in self.blocks:
            h = block(h)
        if self.norm_f is not None:
            h = self.norm_f(h)
        return self.head(h)


def transformer(vocab: int, depth: int, width: int = 64, heads: int = 4,
                ff_width: int | None = None, *, order: str = "pre", classes: int | None = None,
                max_len: int = 64, mlp: bool = True, skip: bool = True,
                final_norm: bool | None = None, fix: str | None = None,
                init: str = "xavier", activation: str = "relu") -> Transformer:
    """A small encoder-only Transformer.

    Args:
        vocab: number of input tokens; ``classes`` (default ``vocab``) the outputs per position.
        depth: number of blocks L.
        order: ``"post"`` (Post-LN), ``"pre"`` (Pre-LN) or ``"none"`` (see :class:`Block`).
        final_norm: a LayerNorm after the last block; default: only for ``order="pre"`` (GPT-2).
        mlp, skip: keep the feed-forward sub-layer, keep the residual connections.
        init: ``"xavier"`` (default): every weight matrix Xavier-uniform (the query, key and
            value projections each as its own d x d matrix), biases zero, as Xiong et al. (2020)
            assume; ``"default"``: PyTorch's init of each module. Embeddings are N(0, 1).
        fix: ``None``; ``"deepnet"``: Post-LN with DeepNorm (Wang et al. 2022, encoder-only
            values): residual scale ``(2L)^(1/4)`` and the value, output and feed-forward
            weights drawn Xavier-normal with gain ``(8L)^(-1/4)``, query and key weights with
            gain 1; ``"rezero"``: no LayerNorm, each branch times a learned gain that starts at
            0 (Bachlechner et al. 2020; one gain per block); ``"admin"``: Post-LN whose residual
            scales :func:`admin_init_` sets from one batch (Liu et al. 2020).

    Raises:
        ValueError: a bad argument, with the valid choices; a fix with an order it does not use.
    """
    vocab = check_positive_int("vocab", vocab, minimum=2)
    depth = check_positive_int("depth", depth)
    classes = vocab if classes is None else check_positive_int("classes", classes, minimum=2)
    max_len = check_positive_int("max_len", max_len)
    check_choice("order", order, ORDERS)
    check_choice("fix", fix, FIXES)
    check_choice("init", init, INITS)
    wanted = {"deepnet": "post", "admin": "post", "rezero": "none"}.get(fix)
    if wanted is not None and order != wanted:
        raise ValueError(f"fix {fix!r} uses order {wanted!r}, got order {order!r}")
    if final_norm is None:
        final_norm = order == "pre"
    check_bool("final_norm", final_norm)
    scale = (2 * depth) ** 0.25 if fix == "deepnet" else 1.0
    blocks = [Block(width, heads, ff_width, order=order, mlp=mlp, skip=skip,
                    residual_scale=scale, rezero=fix == "rezero", activation=activation)
              for _ in range(depth)]
    model = Transformer(vocab, classes, blocks, width, max_len, final_norm)
    if init == "xavier":
        _xavier_init_(model)
    if fix == "deepnet":
        _deepnet_init_(model, beta=(8 * depth) ** -0.25)
    return model


def _xavier_init_(model: Transformer) -> None:
    """Xavier-uniform weights (query, key, value each as a d x d matrix), zero biases."""
    with torch.no_grad():
        linears = [model.head]
        for block in model.blocks:
            attn = block.self_attn
            d = attn.embed_dim
            for i in range(3):
                nn.init.xavier_uniform_(attn.in_proj_weight[i * d: (i + 1) * d])
            attn.in_proj_bias.zero_()
            linears.append(attn.out_proj)
            if block.mlp:
                linears += [block.linear1, block.linear2]
        for lin in linears:
            nn.init.xavier_uniform_(lin.weight)
            lin.bias.zero_()


def _deepnet_init_(model: Transformer, beta: float) -> None:
    """DeepNet's initialization (Wang et al. 2022, Fig. 2): Xavier-normal weights, gain ``beta``
    for the value, output and feed-forward projections and 1 for query and key; zero biases."""
    with torch.no_grad():
        for block in model.blocks:
            attn = block.self_attn
            d = attn.embed_dim
            w = attn.in_proj_weight
            nn.init.xavier_normal_(w[:d])
            nn.init.xavier_normal_(w[d: 2 * d])
            nn.init.xavier_normal_(w[2 * d:], gain=beta)
            nn.init.xavier_normal_(attn.out_proj.weight, gain=beta)
            attn.in_proj_bias.zero_()
            attn.out_proj.bias.zero_()
            if block.mlp:
                for lin in (block.linear1, block.linear2):
                    nn.init.xavier_normal_(lin.weight, gain=beta)
                    lin.bias.zero_()


def admin_init_(model: Transformer, x: torch.Tensor) -> list[float]:
    """Admin's initialization (Liu et al. 2020) of a ``fix="admin"`` model, in place: one
    forward pass on ``x`` measures the variance of every branch output ``F_j``, and sub-layer i
    gets the residual scale ``omega_i = sqrt(sum_{j<i} Var[F_j])`` (1 for the very first), so
    that no branch dominates the sum it is added to. Returns the scales, sub-layer by sub-layer.
    """
    if not isinstance(model, Transformer) or not model.blocks:
        raise ValueError(f"model must be a Transformer from course_lib.transformer.transformer, "
                         f"got {type(model).__name__}")
    if any(b.order != "post" or not b.skip or b.rezero for b in model.blocks):
        raise ValueError("Admin scales the residuals of Post-LN blocks with skips: build the "
                         "model with transformer(..., order='post', fix='admin')")
    variances: list[torch.Tensor] = []

    def keep(name: str, module: nn.Module, inputs: tuple, output: Any) -> None:
        out = output[0] if isinstance(output, tuple) else output
        variances.append(out.detach().double().var())

    branches = {}
    for i, block in enumerate(model.blocks):
        branches[f"{i}.attn"] = block.self_attn
        if block.mlp:
            branches[f"{i}.ff"] = block.linear2
    with torch.no_grad():
        for block in model.blocks:
            block.residual_scale.fill_(1.0)
        with Hooks(branches, keep):
            model(x)
        cumulative = torch.cumsum(torch.stack(variances), 0)
        omegas = [1.0] + [math.sqrt(float(v)) for v in cumulative[:-1]]
        k = 0
        for block in model.blocks:
            for i in range(2 if block.mlp else 1):
                block.residual_scale[i] = omegas[k]
                k += 1
    return omegas


def per_block(profile: Profile, sublayer: str = "linear2") -> Profile:
    """One sub-layer's values, one per block, from a per-layer profile of a :func:`transformer`
    (layer names ``block3.linear2``): a :class:`~course_lib.records.Profile` over ``block1`` ...
    ``blockL`` with the same statistic. ``sublayer`` is ``self_attn`` (the attention's weights,
    its output projection folded in), ``linear1`` or ``linear2``."""
    check_choice("sublayer", sublayer, ("self_attn", "linear1", "linear2"))
    if not isinstance(profile, Profile):
        raise ValueError(f"profile must be a Profile (gradient_norms gives one), got "
                         f"{type(profile).__name__}")
    items = [(name.rsplit(".", 1)[0], value) for name, value in profile.items()
             if name.startswith("block") and name.endswith("." + sublayer)]
    if not items:
        raise ValueError(f"no layer '<block>.{sublayer}' in the profile; layers: "
                         f"{profile.layers}")
    return Profile(items, profile.stat, profile.label)


def block_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The token representations entering the first block (``input``) and leaving every block,
    ``[(name, tensor (n, T, width))]`` in call order, from one forward pass in eval mode without
    gradients. Blocks are the model's :class:`Block` or ``nn.TransformerEncoderLayer`` modules,
    batch first."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    blocks = {name: m for name, m in model.named_modules()
              if isinstance(m, (Block, nn.TransformerEncoderLayer))}
    if not blocks:
        raise ValueError("the model has no Block or nn.TransformerEncoderLayer to measure")
    outputs: list[tuple[str, torch.Tensor]] = []

    def keep(name: str, h: Any) -> None:
        if not isinstance(h, torch.Tensor) or h.ndim != 3:
            raise ValueError(f"a block's input and output must be (n, T, width) tensors, got "
                             f"{getattr(h, 'shape', type(h).__name__)} at {name}")
        outputs.append((name, h.detach()))

    def before(name: str, module: nn.Module, inputs: tuple) -> None:
        if not outputs:
            keep("input", inputs[0])

    def after(name: str, module: nn.Module, inputs: tuple, output: Any) -> None:
        keep(name, output)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), Hooks(blocks, before, pre=True), Hooks(blocks, after):
            model(x)
    finally:
        model.train(was_training)
    return outputs


def rank_collapse(model: nn.Module, x: torch.Tensor) -> Profile:
    """How far the token representations are from rank one, entering the first block and after
    every block: ``||X - 1 mean(X)^T||_F / ||X||_F`` over the batch (float64).

    ``X`` is one sequence's (T, width) matrix of token vectors; ``1 mean(X)^T`` puts the mean token
    in every row, the best approximation of the form ``1 x^T`` in the Frobenius norm. Dong et al.
    (2021) call ``X - 1 x^T`` the residual; it is 0 when every token carries the same vector, 1 when
    the tokens' mean is 0, and it does not change when X is scaled.

    Returns a :class:`~course_lib.records.Profile` (``input``, then the blocks' names).
    """
    values = []
    for name, h in block_outputs(model, x):
        h = h.double()
        total = h.pow(2).sum()
        res = (h - h.mean(1, keepdim=True)).pow(2).sum()
        values.append((name, float((res / total).sqrt()) if total > 0 else math.nan))
    return Profile(values, "rank-one residual ||X - 1x^T|| / ||X||")


def stream_rms(model: nn.Module, x: torch.Tensor) -> Profile:
    """The root mean square of the residual stream's entries, entering the first block and after
    every block (float64): the size a Pre-LN model's final LayerNorm divides by."""
    return Profile([(name, float(h.double().pow(2).mean().sqrt()))
                    for name, h in block_outputs(model, x)], "residual stream rms")


def attention_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                        ) -> dict[str, Profile]:
    """||dL/dW|| of the query, key and value projections of every attention layer, from one
    backward pass: ``{"query": Profile, "key": Profile, "value": Profile}`` over the attention
    layers (named as in :func:`course_lib.instrument.gradient_norms`, e.g. ``block3.self_attn``),
    computed in float64. ``loss_fn`` defaults to :func:`course_lib.instrument.default_loss`.
    The model's gradients are overwritten.

    Noci et al. (2022) show that the query and key gradients vanish when the tokens entering a
    layer have collapsed to one vector: the attention logits are then equal along every row, and
    the softmax has no direction to move in.
    """
    from course_lib.instrument import check_batch, default_loss, output_tensor

    check_batch(model, x, y)
    layers = [(name, m) for name, m in model.named_modules()
              if isinstance(m, nn.MultiheadAttention) and m._qkv_same_embed_dim]
    if not layers:
        raise ValueError("the model has no nn.MultiheadAttention with a joint in_proj_weight")
    model.zero_grad(set_to_none=True)
    out = output_tensor(model(x))
    loss = (loss_fn or default_loss)(out, y)
    loss.backward()
    parts: dict[str, list[tuple[str, float]]] = {"query": [], "key": [], "value": []}
    for name, attn in layers:
        grad = attn.in_proj_weight.grad
        d = attn.embed_dim
        for i, part in enumerate(parts):
            value = math.nan if grad is None else \
                float(torch.linalg.vector_norm(grad[i * d: (i + 1) * d], dtype=torch.float64))
            parts[part].append((name, value))
    return {part: Profile(items, "grad_norm", part) for part, items in parts.items()}


def output_change(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float = 1e-4,
                  loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                  ) -> float:
    """How much one optimizer step of size ``lr`` changes the model's output, relative to it:
    ``||f(x; W - lr sign(g)) - f(x; W)|| / ||f(x; W)||`` with ``g`` the gradient of the loss on
    ``(x, y)``.

    ``W - lr sign(g)`` is Adam's very first step (its update ``m / sqrt(v)`` is ``g / |g|`` at
    step 1): every parameter moves by ``lr``, whatever the size of its gradient. Liu et al. (2020)
    show that the output change this causes grows like the depth L in a Post-LN Transformer and
    like log L in a Pre-LN one. Measured on a copy (float64 norms): the model, its gradients and
    its mode are left as they are.
    """
    import copy

    from course_lib.instrument import check_batch, default_loss, output_tensor

    check_batch(model, x, y)
    lr = check_float("lr", lr, positive=True)
    twin = copy.deepcopy(model)
    twin.zero_grad(set_to_none=True)
    loss = (loss_fn or default_loss)(output_tensor(twin(x)), y)
    loss.backward()
    with torch.no_grad():
        before = output_tensor(twin(x)).double()
        for p in twin.parameters():
            if p.grad is not None:
                p -= lr * p.grad.sign()
        after = output_tensor(twin(x)).double()
    return float(torch.linalg.vector_norm(after - before) / torch.linalg.vector_norm(before))


def token_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   batch_size: int = 1024) -> float:
    """Fraction of positions where the model's most likely token equals the target (eval mode,
    no gradients); ``x`` and ``y`` are (n, T) token ids."""
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"x and y must be (n, T) token ids of one shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    batch_size = check_positive_int("batch_size", batch_size)
    was_training = model.training
    model.eval()
    hits = 0
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                out = model(x[i: i + batch_size])
                hits += int((out.argmax(-1) == y[i: i + batch_size]).sum())
    finally:
        model.train(was_training)
    return hits / y.numel()


def linear_warmup(warmup_steps: int) -> Callable[[torch.optim.Optimizer], Any]:
    """A scheduler factory for :func:`course_lib.train.fit`: the learning rate rises linearly
    from ``lr / warmup_steps`` at the first step to ``lr`` at step ``warmup_steps`` (counting
    from 1), then stays at ``lr``."""
    warmup_steps = check_positive_int("warmup_steps", warmup_steps)

    def build(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup_steps))

    return build


def noam_rate(step: int, d_model: int, warmup_steps: int) -> float:
    """The learning rate of Vaswani et al. (2017, eq. 3) at ``step`` (counting from 1):
    ``d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5)``: a linear rise over
    ``warmup_steps`` steps, then a decay like ``1/sqrt(step)``.

    Raises:
        ValueError: ``step``, ``d_model`` or ``warmup_steps`` is not an integer >= 1.
    """
    step = check_positive_int("step", step)
    d_model = check_positive_int("d_model", d_model)
    warmup_steps = check_positive_int("warmup_steps", warmup_steps)
    return d_model ** -0.5 * min(step ** -0.5, step * warmup_steps ** -1.5)


def power_law_exponent(sizes: Sequence[float], values: Sequence[float]) -> float:
    """The exponent k of ``value ~ size^k``: the slope of a least-squares line through
    ``(log size, log value)``. 0: independent of size; -0.5: like ``1/sqrt(size)``."""
    s = np.asarray(sizes, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if s.shape != v.shape or s.ndim != 1 or len(s) < 2:
        raise ValueError(f"need two 1-d sequences of the same length >= 2, got shapes "
                         f"{s.shape} and {v.shape}")
    if not (np.all(np.isfinite(s)) and np.all(s > 0) and np.all(np.isfinite(v))
            and np.all(v > 0)):
        raise ValueError("sizes and values must be positive and finite")
    if len(set(s.tolist())) < 2:
        raise ValueError("need at least two different sizes")
    rate, _ = geometric_fit(v, np.log(s))  # value ~ scale * rate ** log(size) = scale * size^k
    return math.log(rate)
