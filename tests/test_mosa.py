"""MoSA against a reference written from the paper and the official code (Theia-4869/MoSA): N dense copies
trained one at a time with masked gradients, the consistency loss from two separate forwards, merge, I/O.

The reference keeps what the official code does (dense copies, copy i used whole in the forward, gradients
masked to module i's entries after backward, MERGE="add": sum of the copies / N) and takes the module of each
step from the same `Draws`, so both sides see the same draws. Biases are not masked: each copy trains its full
bias, as under their default MODEL.ADAPTER.BIAS=True. It uses zero_grad(set_to_none=True), where their
PyTorch-1.11 zero_grad() kept zero gradients (a documented difference, see the weight-decay test).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import randomize_adapters, tiny_inputs, tiny_model
from torch import nn

import adapterlab as al
from adapterlab.methods.split import SplitLinear
from adapterlab.core.stochastic import Draws, draw_context

pytestmark = pytest.mark.usefixtures("single_thread")

SEED = 1234  # the training seed (the Trainer's args.seed), which draw_context passes on to Draws
CASES = [pytest.param(dict(base="parallel", targets=["mlp"], size=8, split=s), id=f"parallel-{s}")
         for s in ("up", "down", "both")]
CASES += [pytest.param(dict(base="adaptformer", size=8, dropout=0.0, split=s), id=f"adaptformer-{s}")
          for s in ("up", "both")]
CASES += [pytest.param(dict(base="lora", targets=["q", "v"], r=4, split=s), id=f"lora-{s}") for s in ("up", "both")]


def split_layers(model: nn.Module) -> dict[str, SplitLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SplitLinear)}


def without_dropout(model: nn.Module) -> nn.Module:
    """The model with every dropout off, so that two runs in training mode differ only by the draws."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def mosa_bert(seed: int = 0, **options) -> nn.Module:
    """A tiny BERT classifier with MoSA attached (attach seeded: same seed, same masks and inits), no dropout."""
    model = without_dropout(tiny_model("bert"))
    torch.manual_seed(seed)
    return al.attach(model, "mosa", **{"consistency": 0.0, **options}).train()


def batch(step: int, family: str = "bert") -> dict[str, torch.Tensor]:
    inputs = tiny_inputs(family, batch=4, seed=100 + step)
    return {**inputs, "labels": torch.randint(3, (4,), generator=torch.Generator().manual_seed(step))}


class DenseCopies(nn.Module):
    """The official code's MoSA layer: N dense copies of one initial layer; training runs copy i whole, and
    after backward its gradient is masked to module i's entries (their pruner masks; here our `owner == i`)."""

    def __init__(self, split: SplitLinear) -> None:
        super().__init__()
        self.key, self.n, self.step = split.draw_key, split.n, 0
        initial = split.initial()
        self.copies = nn.ParameterList(nn.Parameter(initial.clone()) for _ in range(self.n))
        self.biases = None if split.biases is None else nn.ParameterList(
            nn.Parameter(split.biases[0].detach().clone()) for _ in range(self.n))
        self.register_buffer("masks", torch.stack([(split.owner == i).view(split.shape) for i in range(self.n)]))
        self.register_buffer("initial", initial.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = Draws(SEED, self.step).choice(self.key, self.n, 0)
        return F.linear(x, self.copies[i], None if self.biases is None else self.biases[i])

    def mask_gradients(self) -> None:
        for copy, mask in zip(self.copies, self.masks):
            if copy.grad is not None:
                copy.grad *= mask

    def merged(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Their MERGE="add": the sum of the copies (weights and biases) divided by N."""
        bias = None if self.biases is None else sum(b.detach() for b in self.biases) / self.n
        return sum(c.detach() for c in self.copies) / self.n, bias


def with_dense_copies(model: nn.Module) -> dict[str, DenseCopies]:
    """Replace every SplitLinear of `model` by its DenseCopies reference; the references by layer name."""
    references = {}
    for name, split in split_layers(model).items():
        parent, _, child = name.rpartition(".")
        references[name] = DenseCopies(split)
        setattr(model.get_submodule(parent), child, references[name])
    return references


def train(model: nn.Module, steps: int, weight_decay: float, references: dict[str, DenseCopies] | None = None,
          restore_frozen: bool = False) -> None:
    """AdamW steps on the plain task loss: ours in a draw_context, the reference with masked gradients.
    restore_frozen: put each reference copy's entries outside its mask back to the initial weight after a step."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2,
                                  weight_decay=weight_decay)
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        if references is None:
            with draw_context(model, step=step, seed=SEED):
                model(**batch(step)).loss.backward()
        else:
            for reference in references.values():
                reference.step = step
            model(**batch(step)).loss.backward()
            for reference in references.values():
                reference.mask_gradients()
        optimizer.step()
        if restore_frozen:
            with torch.no_grad():
                for reference in references.values():
                    for copy, mask in zip(reference.copies, reference.masks):
                        copy.copy_(torch.where(mask, copy, reference.initial))


def assert_same_adapter(ours: nn.Module, reference: nn.Module, references: dict[str, DenseCopies]) -> None:
    """Our merged SplitLinear weights and biases equal the reference's mean of copies; every other adapter
    parameter (the dense projection, scalings) is equal too."""
    splits = split_layers(ours)
    assert set(splits) == set(references)
    for name, split in splits.items():
        weight, bias = references[name].merged()
        torch.testing.assert_close(split.weight.detach(), weight, atol=1e-6, rtol=0, msg=name)
        if bias is not None:
            torch.testing.assert_close(split.bias.detach(), bias, atol=1e-6, rtol=0, msg=name)
        assert not torch.equal(split.weight, split.initial()), f"{name} did not train"
    theirs = dict(reference.named_parameters())
    for name, parameter in ours.named_parameters():
        if parameter.requires_grad and not any(name.startswith(s + ".") for s in splits):
            torch.testing.assert_close(parameter, theirs[name], atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("options", CASES)
def test_training_matches_dense_copies_with_masked_gradients(options):
    ours, reference = mosa_bert(**options), mosa_bert(**options)
    references = with_dense_copies(reference)
    train(ours, 5, weight_decay=0.0)
    train(reference, 5, weight_decay=0.0, references=references)
    assert_same_adapter(ours, reference, references)


@pytest.mark.parametrize("options", CASES)
def test_weight_decay_reaches_only_the_drawn_modules_own_entries(options):
    """With weight decay, a module not drawn in a step is not updated at all: it has no gradient (None), so
    AdamW skips it, as dense copies under zero_grad(set_to_none=True) are skipped. (The official code's
    PyTorch-1.11 zero_grad() left zero gradients, so AdamW decayed and moved idle copies too; we do not.)

    A drawn module decays only its own entries: the rest of its weight is the shared initial weight, which
    is not a parameter of any module. Dense copies decay the drawn copy's frozen entries as well; that makes
    no difference where the initial weight is zero (split up-projections) and is the only difference where it
    is Kaiming (split down-projections): restoring those frozen entries after each step matches exactly.
    """
    ours, reference, restored = mosa_bert(**options), mosa_bert(**options), mosa_bert(**options)
    references, restored_references = with_dense_copies(reference), with_dense_copies(restored)
    train(ours, 5, weight_decay=0.5)
    train(reference, 5, weight_decay=0.5, references=references)
    train(restored, 5, weight_decay=0.5, references=restored_references, restore_frozen=True)
    assert_same_adapter(ours, restored, restored_references)
    if options["split"] == "up":
        assert_same_adapter(ours, reference, references)
    else:
        with pytest.raises(AssertionError):
            assert_same_adapter(ours, reference, references)


def symmetric_kl_reference(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The official symmetric_KL_loss: 0.5 (KL(p||q) + KL(q||p)), 'batchmean', each term's target detached."""
    return 0.5 * (F.kl_div(F.log_softmax(first, -1), F.softmax(second.detach(), -1), reduction="batchmean")
                  + F.kl_div(F.log_softmax(second, -1), F.softmax(first.detach(), -1), reduction="batchmean"))


class GroupDraws(Draws):
    """The draws of forward group `as_group` in a forward of one group (a reference's separate forward)."""

    def __init__(self, seed: int, step: int, as_group: int) -> None:
        super().__init__(seed, step)
        object.__setattr__(self, "as_group", as_group)

    def choice(self, key: str, n: int, group: int = 0) -> int:
        return super().choice(key, n, self.as_group)


def separate_forward(model: nn.Module, inputs: dict, step: int, group: int):
    """One forward in which every split layer uses the module drawn for forward group `group` of `step`."""
    layers = split_layers(model).values()
    for layer in layers:
        layer.draws = GroupDraws(SEED, step, group)
    try:
        return model(**inputs)
    finally:
        for layer in layers:
            layer.draws = None


def reference_consistency(model, inputs, labels, step, additional, consistency):
    """CE(out1) + additional CE(out2) + consistency symmetric KL(out1, out2), out1 and out2 from two separate
    forwards (draw groups 0 and 1); for a causal LM, the next-token rows whose label is not -100.
    Returns the loss, its KL term, and the rows of out1 and of the labels that the loss was computed on."""
    first, second = (separate_forward(model, inputs, step, group).logits.float() for group in (0, 1))
    if first.dim() == 3:
        labels = labels[:, 1:]
        keep = labels != -100
        first, second, labels = first[:, :-1][keep], second[:, :-1][keep], labels[keep]
    kl = symmetric_kl_reference(first, second)
    return F.cross_entropy(first, labels) + additional * F.cross_entropy(second, labels) + consistency * kl, kl, \
        first, labels


def gradients(model: nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_consistency_loss_equals_two_separate_forwards(family):
    model = without_dropout(tiny_model(family))
    al.attach(model, "mosa", base="parallel", size=8, split="both", consistency=2.0, additional=0.5)
    randomize_adapters(model, std=0.5)
    with torch.no_grad():  # a sharper head than the tiny model's, so that the two forwards' distributions differ
        (model.classifier if family == "bert" else model.lm_head).weight.mul_(20)
    model.train()
    inputs = tiny_inputs(family, batch=3, length=7)
    if family == "llama":  # a prompt of 3 or 5 tokens, then the response
        labels = inputs["input_ids"].clone()
        labels[0, :3] = labels[1:, :5] = -100
    else:
        labels = torch.tensor([0, 2, 1])
    objective = al.get_config(model).objective()
    with draw_context(model, step=7, groups=objective.groups, seed=SEED):
        loss, outputs = objective.loss(model, {**inputs, "labels": labels})
        loss.backward()
    ours = gradients(model)
    model.zero_grad(set_to_none=True)
    expected, kl, first, kept = reference_consistency(model, inputs, labels, 7, additional=0.5, consistency=2.0)
    expected.backward()
    assert kl > 1e-2, kl  # the two forwards drew different modules
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    theirs = gradients(model)
    assert ours.keys() == theirs.keys() and sum(g is not None for g in ours.values()) > 0
    for name, grad in ours.items():
        assert (grad is None) == (theirs[name] is None), name
        if grad is not None:
            torch.testing.assert_close(grad, theirs[name], atol=1e-5, rtol=1e-5, msg=name)
    logits = outputs.logits.float()  # the first copy's outputs come back, as a plain forward's
    torch.testing.assert_close(logits[:, :-1][labels[:, 1:] != -100] if logits.dim() == 3 else logits, first.detach())
    with torch.no_grad():  # the first forward's term is the model's own loss (response tokens for a causal LM)
        own = separate_forward(model, {**inputs, "labels": labels}, 7, 0).loss
    torch.testing.assert_close(own, F.cross_entropy(first.detach(), kept))
