"""momos.finetune: projection, distillation fine-tuning under the projection, an exact mosaic at the end."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import momos
from momos.finetune import FinetuneConfig, Output, distillation_loss, finetune

CONFIG = momos.MoMosConfig(block_size=4, capacity=0.05, normalize="channel")


pytestmark = pytest.mark.usefixtures("one_thread")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def _batches(n: int = 4, labels: bool = True):
    generator = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        x = torch.randn(8, 16, generator=generator)
        out.append((x, torch.randint(0, 4, (8,), generator=generator)) if labels else x)
    return out


def test_the_result_is_an_exact_mosaic_and_every_projection_is_reported():
    model = _model()
    seen = []
    result = finetune(model, CONFIG, _batches(), steps=10, tune="weights", every_n_steps=4,
                      on_projection=lambda step, stats: seen.append(step))
    assert seen == [0, 4, 8, 10]   # first, every 4 steps, and at the end (10 is not a multiple of 4)
    assert len(result.losses) == 10
    assert momos.is_mosaic(model, CONFIG, result.stats.codebook_motifs(), result.stats.scales)


def test_motif_tuning_keeps_the_assignments_and_the_zero_motif_and_trains_the_table():
    model = _model()
    first = {}
    result = finetune(model, CONFIG, _batches(), steps=10, lr=1e-2,
                      on_projection=lambda step, stats: first.setdefault(step, stats))
    assert list(first) == [0]   # one projection; the weights never leave the mosaic
    assert torch.equal(result.stats.assignments, first[0].assignments)
    assert result.stats.changed_weights == 0
    assert not torch.equal(result.stats.motifs, first[0].motifs)
    assert torch.equal(result.stats.motifs[0], torch.zeros(4))   # force_zero's motif stays zero
    assert momos.is_mosaic(model, CONFIG, result.stats.codebook_motifs(), result.stats.scales)


def test_training_changes_the_model_and_the_teacher_is_left_alone():
    model = _model()
    original = copy.deepcopy(model)
    teacher = copy.deepcopy(model)
    projected_only = copy.deepcopy(model)
    finetune(projected_only, CONFIG, _batches(), steps=0)
    finetune(model, CONFIG, _batches(), teacher=teacher, steps=20, lr=1e-2)
    assert not torch.equal(model[1].weight, projected_only[1].weight)
    for a, b in zip(teacher.parameters(), original.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("tune", ["motifs", "weights"])
def test_distillation_pulls_the_student_towards_the_teacher(tune):
    model = _model()
    x = torch.cat([b[0] for b in _batches()])
    with torch.no_grad():
        target = model(x)
    # persistent motifs: the weights schedule refines one codebook instead of redrawing it
    config = momos.MoMosConfig(block_size=4, capacity=0.2, motif_method="persistent")
    projected = copy.deepcopy(model)
    finetune(projected, config, [x], steps=0)
    tuned = copy.deepcopy(model)
    every = {"every_n_steps": 20} if tune == "weights" else {}
    mse = lambda student, teacher, labels: (student.value - teacher.value).square().mean()  # noqa: E731
    finetune(tuned, config, [x], steps=200, lr=3e-3, tune=tune, loss_fn=mse, **every)
    with torch.no_grad():
        before = (projected(x) - target).square().mean()
        after = (tuned(x) - target).square().mean()
    assert after < 0.5 * before


def test_steps_zero_projects_only_and_keeps_the_mode():
    model = _model().eval()
    result = finetune(model, CONFIG, [], steps=0)
    assert result.losses == [] and not model.training
    assert momos.is_mosaic(model, CONFIG, result.stats.codebook_motifs(), result.stats.scales)


def test_the_task_loss_enters_only_with_labels_and_a_weight_below_one():
    student = Output(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), True)
    teacher = Output(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), True)
    labels = torch.tensor([1, 0])
    assert distillation_loss(student, teacher, labels) == 0   # distill_weight 1: labels ignored
    mixed = distillation_loss(student, teacher, labels, FinetuneConfig(distill_weight=0.5))
    expected = 0.5 * nn.functional.cross_entropy(student.value, labels)
    torch.testing.assert_close(mixed, expected)


def test_embeddings_are_matched_by_cosine_similarity_over_unmasked_positions():
    value = torch.randn(2, 3, 5)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    other = value.clone()
    other[0, 2] = -value[0, 2]   # masked out: does not count
    assert distillation_loss(Output(value, False, mask), Output(other, False, mask), None) < 1e-6
    other[1, 0] = -value[1, 0]   # counted: 1 - cos = 2 at one of three positions
    torch.testing.assert_close(distillation_loss(Output(value, False, mask), Output(other, False, mask), None),
                               torch.tensor(2 / 3))


def test_model_outputs_with_logits_or_hidden_states_are_understood():
    class Wrapped(nn.Module):
        def __init__(self, inner, key):
            super().__init__()
            self.inner, self.key = inner, key

        def forward(self, inputs):
            return SimpleNamespace(**{self.key: self.inner(inputs).unsqueeze(1)})

    for key in ("logits", "last_hidden_state"):
        model = Wrapped(_model(), key)
        result = finetune(model, CONFIG, _batches(labels=False), steps=3)
        assert len(result.losses) == 3


def test_a_non_finite_loss_stops_with_the_step_and_puts_back_the_last_mosaic():
    model = _model()
    calls, projected = [], {}

    def loss_fn(student, teacher, labels):
        calls.append(1)
        loss = (student.value - teacher.value).square().mean() + 1.0
        return loss * float("nan") if len(calls) == 6 else loss

    def remember(step, stats):
        projected[step] = {k: v.clone() for k, v in model.state_dict().items()}

    with pytest.raises(ValueError, match="at step 6"):
        finetune(model, CONFIG, _batches(), steps=10, tune="weights", every_n_steps=2, loss_fn=loss_fn,
                 lr=1e-2, on_projection=remember)
    assert sorted(projected) == [0, 2, 4]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, projected[4][name]), name


def test_the_learning_rate_defaults_by_what_is_tuned():
    assert FinetuneConfig().lr == 3e-3 and FinetuneConfig(tune="weights").lr == 1e-4
    assert FinetuneConfig(lr=1e-2).lr == 1e-2


def test_bad_batches_and_options_are_named():
    with pytest.raises(ValueError, match="batches is empty"):
        finetune(_model(), CONFIG, [], steps=2)
    with pytest.raises(ValueError, match="ran out after one pass"):
        finetune(_model(), CONFIG, iter(_batches(2)), steps=5)
    with pytest.raises(ValueError, match="lr must be positive"):
        finetune(_model(), CONFIG, _batches(), lr=0.0)
    with pytest.raises(ValueError, match="never leave the mosaic"):
        FinetuneConfig(every_n_steps=5)
    with pytest.raises(ValueError, match="motif_bits"):
        finetune(_model(), momos.MoMosConfig(block_size=4, capacity=0.05, motif_bits=4), _batches(), steps=2)
    with pytest.raises(ValueError, match="distill_weight"):
        FinetuneConfig(distill_weight=1.5)
    with pytest.raises(TypeError):
        finetune(_model(), CONFIG, _batches(), no_such_option=1)
