"""The continuous batcher as the server drives it (evaluate.scheduler + evaluate.sampling): seeded sampling that does
not depend on the batch a request shares, greedy and sampled rows side by side, requests joining mid-decode, a
per-token callback, cancellation, per-row adapter names, and nucleus filtering."""

from __future__ import annotations

import pytest
import torch
from test_eval_continuous import batch1, family_lm

from adapterlab.evaluate.sampling import Sampling, draw
from adapterlab.evaluate.scheduler import BASE, ContinuousBatcher, Request

PROMPTS = [[5, 9, 11], list(range(3, 40)), [7], [20, 21, 22, 23, 24, 25, 26, 27]]


def run(model, requests, max_rows=8, late=(), **options) -> dict:
    """Decode `requests`; each (step, request) in `late` is added after that many steps. Results by key."""
    batcher = ContinuousBatcher(model, eos_ids=[], max_rows=max_rows, **options)
    for request in requests:
        batcher.add(request)
    late, done, step = sorted(late, key=lambda x: x[0]), {}, 0
    while batcher.busy() or late:
        while late and late[0][0] <= step:
            batcher.add(late.pop(0)[1])
        for request in batcher.step():
            done[request.key] = request
        step += 1
    return done


def test_seeded_sampling_does_not_depend_on_the_batch():
    """A sampled request gives the same tokens alone, beside others, and joining a running batch late."""
    model = family_lm("llama", 64)
    sampling = lambda seed: Sampling(temperature=0.9, top_p=0.8, seed=seed)
    alone = {i: run(model, [Request(i, p, 12, sampling=sampling(i))])[i].out for i, p in enumerate(PROMPTS)}
    assert len({tuple(t) for t in alone.values()}) == len(PROMPTS)
    together = run(model, [Request(i, p, 12, sampling=sampling(i)) for i, p in enumerate(PROMPTS)])
    assert {i: r.out for i, r in together.items()} == alone
    late = run(model, [Request(0, PROMPTS[0], 12, sampling=sampling(0))],
               late=[(3, Request(1, PROMPTS[1], 12, sampling=sampling(1))),
                     (5, Request(2, PROMPTS[2], 12, sampling=sampling(2)))])
    assert {i: r.out for i, r in late.items()} == {i: alone[i] for i in range(3)}
    assert run(model, [Request(0, PROMPTS[0], 12, sampling=sampling(7))])[0].out != alone[0]  # the seed matters


def test_greedy_rows_beside_sampled_rows_equal_batch1_greedy():
    model = family_lm("gpt2", 64)
    requests = [Request(i, p, 10, sampling=Sampling(temperature=0.0 if i % 2 else 1.5, seed=i))
                for i, p in enumerate(PROMPTS)]
    late = Request("late", [3, 4, 5, 6], 6)
    done = run(model, requests, max_rows=3, late=[(4, late)])
    for i, p in enumerate(PROMPTS):
        if i % 2:
            assert done[i].out == batch1(model, p, 10)
    assert done["late"].out == batch1(model, [3, 4, 5, 6], 6)
    assert {r.finish for r in done.values()} == {"length"}


def test_on_token_sees_every_token_and_cancel_frees_the_row():
    """The callback sees each token as it is chosen; a cancelled row leaves at the next step (the others are
    unchanged), and a cancelled waiting request never runs."""
    model = family_lm("llama", 64)
    seen: dict = {}

    def on_token(request, token):
        seen.setdefault(request.key, []).append(token)
        if request.key == "gone" and len(request.out) == 3:
            request.cancelled = True

    waiting = Request("never", [9, 9], 5, on_token=on_token, cancelled=True)
    requests = [Request(i, p, 9, on_token=on_token) for i, p in enumerate(PROMPTS)]
    done = run(model, [Request("gone", [4, 5], 20, on_token=on_token), *requests, waiting], max_rows=5)
    assert done["gone"].finish == "cancelled" and done["gone"].out == seen["gone"] == batch1(model, [4, 5], 3)
    assert done["never"].finish == "cancelled" and done["never"].out == [] and "never" not in seen
    for i, p in enumerate(PROMPTS):
        assert done[i].out == seen[i] == batch1(model, p, 9)


def test_stop_and_length_set_finish():
    model = family_lm("llama", 64)
    want = batch1(model, PROMPTS[1], 8)
    done = run(model, [Request("stop", PROMPTS[1], 8, stop=lambda out: out[-1] == want[2]),
                       Request("length", PROMPTS[1], 8)])
    assert (done["stop"].finish, done["stop"].out) == ("stop", want[: want.index(want[2]) + 1])
    assert (done["length"].finish, done["length"].out) == ("length", want)


class Recorder(torch.nn.Module):
    """A model that records the `adapter_names` of every forward, then runs the wrapped model without them."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.calls = model, []

    def forward(self, input_ids, attention_mask, past_key_values, use_cache, position_ids=None, logits_to_keep=0,
                adapter_names=None):
        self.calls.append(adapter_names)
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                          use_cache=use_cache, position_ids=position_ids, logits_to_keep=logits_to_keep)


def test_per_row_adapters_pass_each_rows_adapter_name():
    model = Recorder(family_lm("llama", 64))
    requests = [Request("a", [3, 4], 3, adapter="a"), Request("b", [5], 2), Request("c", [6, 7, 8], 3, adapter="c")]
    run(model, requests, per_row_adapters=True)
    assert model.calls[:3] == [["a"], [BASE], ["c"]]  # each prefill alone, then the joined batch
    assert model.calls[3:] == [["a", BASE, "c"], ["a", "c"]]
    plain = Recorder(family_lm("llama", 64))
    run(plain, [Request(0, [3], 2, adapter="a")], per_row_adapters=False)
    assert plain.calls == [None, None]


def test_top_p_keeps_the_nucleus_and_temperature_zero_is_argmax():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, -3.0])
    probs = torch.softmax(logits, -1)  # 0.61, 0.23, 0.14, ...: top_p 0.8 keeps the first two
    assert probs[0] < 0.8 < probs[:2].sum()
    drawn = {draw(logits, Sampling(temperature=1.0, top_p=0.8, seed=s)) for s in range(200)}
    assert drawn == {0, 1}
    assert {draw(logits, Sampling(temperature=1.0, top_p=0.5, seed=s)) for s in range(50)} == {0}
    assert {draw(logits, Sampling(temperature=5.0, seed=s)) for s in range(300)} == set(range(5))
    assert draw(logits, Sampling(temperature=0.0)) == 0


def test_rows_of_different_adapters_in_one_batch_equal_each_adapter_alone():
    """LoRA, IA3 and base rows decode in one batch (adapter_names per row), joining late, each row equal to
    batch-1 greedy generation with its adapter alone."""
    import adapterlab as al

    model = family_lm("llama", 64)
    for seed, (name, method) in enumerate((("a", "lora"), ("b", "ia3"))):
        al.attach(model, method, name=name)
        torch.manual_seed(seed)
        for p in model.parameters():
            if p.requires_grad:
                p.data.normal_(0, 0.5)
    model.eval()
    want = solo_outputs(model, ("a", "b", None), PROMPTS, 8)
    assert want["a", 0] != want["b", 0] != want[None, 0]
    requests = [Request((n, i), p, 8, adapter=n) for i, p in enumerate(PROMPTS) for n in ("a", "b", None)]
    done = run(model, requests[:4], max_rows=5, per_row_adapters=True,
               late=[(2 + k, r) for k, r in enumerate(requests[4:])])
    assert {key: r.out for key, r in done.items()} == want


def solo_outputs(model, names, prompts, new_tokens) -> dict:
    """(adapter name, prompt index) -> batch-1 greedy tokens with only that adapter active (None: the base)."""
    import adapterlab as al

    want = {}
    for name in names:
        for i, p in enumerate(prompts):
            if name is None:
                with al.disabled(model):
                    want[name, i] = batch1(model, p, new_tokens)
            else:
                al.set_active(model, name, trainable=False)
                want[name, i] = batch1(model, p, new_tokens)
    return want


def _noisy(model, seed):
    torch.manual_seed(seed)
    for p in model.parameters():
        if p.requires_grad:
            p.data.normal_(0, 0.5)


@pytest.mark.parametrize("methods", [
    (("p3", "prompt", {"num_virtual_tokens": 3}), ("p5", "prompt", {"num_virtual_tokens": 5}), ("l", "lora", {})),
    (("f2", "prefix", {"num_virtual_tokens": 2}), ("f4", "prefix", {"num_virtual_tokens": 4})),
], ids=["prompt+lora", "prefix"])
def test_rows_with_different_virtual_token_counts_share_a_batch(methods):
    """Virtual-token adapters with different counts (and LoRA, and the base) decode in one batch, joining late in
    either order (a newcomer with more virtual tokens pads the running rows' front), each row equal to batch-1 greedy
    generation with its adapter alone."""
    import adapterlab as al

    model = family_lm("llama", 64)
    for seed, (name, method, options) in enumerate(methods):
        al.attach(model, method, name=name, **options)
        _noisy(model, seed)
    model.eval()
    names = [m[0] for m in methods] + [None]
    want = solo_outputs(model, names, PROMPTS[:3], 6)
    requests = [Request((n, i), p, 6, adapter=n) for i, p in enumerate(PROMPTS[:3]) for n in names]
    done = run(model, requests[:2], max_rows=len(requests), per_row_adapters=True,
               late=[(1 + k, r) for k, r in enumerate(requests[2:])])
    assert {key: r.out for key, r in done.items()} == want
