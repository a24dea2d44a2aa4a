"""Quality-guided sampling: it keeps the judge's favourite candidate, in batches, and raises confidence."""

import copy

import pytest
import torch
from torch import nn

from fashion_tune.models.sampling import class_labels, guided_sample, raw_sample
from fashion_tune.training.config import resolve_config
from fashion_tune.training.loop import build_model, fit, load_splits

TINY = {
    "vae": {"width": 8, "depth": 1, "latent_dim": 8, "embed_dim": 8, "batch_size": 50, "lr": 3e-3},
    "cnn": {"width": 8, "depth": 1, "batch_size": 50, "lr": 3e-3},
}


def tiny(kind, **overrides):
    return {**TINY[kind], "subset": 1000, "val_subset": 500, "device": "cpu", "epochs": 2, **overrides}


def train(kind, splits):
    states = []
    fit(kind, tiny(kind), splits=splits, reporter=lambda metrics, state: states.append(copy.deepcopy(state)))
    model = build_model(kind, states[-1]["config"])
    model.load_state_dict(states[-1]["model"])
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    """A VAE and a CNN judge trained for two epochs on 1,000 images (a few seconds)."""
    splits = load_splits(resolve_config("vae", tiny("vae")))
    return train("vae", splits), train("cnn", splits)


def untrained(kind):
    torch.manual_seed(0)
    return build_model(kind, resolve_config(kind, TINY[kind])).eval()


def judge_confidence(judge, images, labels):
    with torch.no_grad():
        return torch.softmax(judge(images), 1).gather(1, labels[:, None]).squeeze(1)


def test_guided_sampling_raises_mean_judge_confidence_over_raw(trained):
    vae, judge = trained
    labels = class_labels(10)
    raw = raw_sample(vae, labels, torch.Generator().manual_seed(0))
    raw_conf = judge_confidence(judge, raw, labels)
    guided, guided_conf = guided_sample(vae, judge, labels, candidates=30, generator=torch.Generator().manual_seed(1))
    assert guided.shape == raw.shape == (100, 1, 28, 28)
    assert guided_conf.mean() > raw_conf.mean() + 0.1, (raw_conf.mean(), guided_conf.mean())
    guided_acc = (judge(guided).argmax(1) == labels).float().mean()
    raw_acc = (judge(raw).argmax(1) == labels).float().mean()
    assert guided_acc > raw_acc


def test_guided_sample_keeps_the_candidate_the_judge_likes_best():
    vae, judge = untrained("vae"), untrained("cnn")
    labels = torch.tensor([3, 7])
    images, confidence = guided_sample(vae, judge, labels, candidates=16, generator=torch.Generator().manual_seed(4))
    # Redo it by hand: 16 latents for label 3, then 16 for label 7, from the same seed.
    z = torch.randn(32, 8, generator=torch.Generator().manual_seed(4))
    wanted = labels.repeat_interleave(16)
    with torch.no_grad():
        everything = torch.sigmoid(vae.decode(z, wanted))
    scores = judge_confidence(judge, everything, wanted).view(2, 16)
    best = scores.argmax(1)
    torch.testing.assert_close(confidence, scores.max(1).values)
    torch.testing.assert_close(images, everything.view(2, 16, 1, 28, 28)[torch.arange(2), best])
    torch.testing.assert_close(judge_confidence(judge, images, labels), confidence)


class CountingJudge(nn.Module):
    """Wraps a judge and records the batch size of every forward call."""

    def __init__(self, judge):
        super().__init__()
        self.judge = judge
        self.calls = []

    def forward(self, x):
        self.calls.append(len(x))
        return self.judge(x)


def test_candidates_are_judged_in_batches_not_one_by_one():
    vae, judge = untrained("vae"), CountingJudge(untrained("cnn"))
    guided_sample(vae, judge, class_labels(1), candidates=100, batch_size=500)
    assert judge.calls == [500, 500]  # 10 labels x 100 candidates in two forward passes
    judge.calls.clear()
    guided_sample(vae, judge, torch.tensor([1, 2, 3]), candidates=7, batch_size=2000)
    assert judge.calls == [21]


def test_sampling_is_seeded_and_leaves_the_models_mode_alone():
    vae, judge = untrained("vae"), untrained("cnn")
    labels = torch.tensor([0, 5, 9])
    first = guided_sample(vae, judge, labels, candidates=5, generator=torch.Generator().manual_seed(7))
    vae.train(), judge.train()
    second = guided_sample(vae, judge, labels, candidates=5, generator=torch.Generator().manual_seed(7))
    assert vae.training and judge.training  # restored afterwards
    torch.testing.assert_close(first, second)  # and sampled in eval mode regardless
    other = guided_sample(vae, judge, labels, candidates=5, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(first[0], other[0])


def test_bad_requests_are_refused():
    vae, judge = untrained("vae"), untrained("cnn")
    with pytest.raises(ValueError, match="candidates"):
        guided_sample(vae, judge, [1], candidates=0)
    with pytest.raises(ValueError, match="labels must lie in 0..9"):
        raw_sample(vae, [10])


@pytest.mark.parametrize("prior", ["standard", "mixture"])
def test_batch_size_does_not_change_the_samples(prior):
    vae, judge = untrained("vae"), untrained("cnn")
    if prior == "mixture":  # 3 Gaussians per class: the components are picked from the same generator
        g = torch.Generator().manual_seed(3)
        vae.set_prior(torch.randn(10, 3, 8, generator=g), 0.5 * torch.eye(8).repeat(10, 3, 1, 1), torch.randn(10, 3, generator=g))
    labels = torch.tensor([0, 5, 9, 2, 2])
    for batch_size in (1, 7, 2000):
        torch.testing.assert_close(raw_sample(vae, labels, torch.Generator().manual_seed(7), batch_size=batch_size),
                                   raw_sample(vae, labels, torch.Generator().manual_seed(7)))
        torch.testing.assert_close(guided_sample(vae, judge, labels, 6, torch.Generator().manual_seed(7), batch_size=batch_size),
                                   guided_sample(vae, judge, labels, 6, torch.Generator().manual_seed(7)))
