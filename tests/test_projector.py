import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import momos
from momos.blocks import to_blocks


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def test_epoch_schedule_with_warmup():
    model = small_model()
    projector = momos.Projector(model, momos.MoMosConfig(capacity=0.1), warmup_epochs=2)
    assert projector.step() is None
    assert projector.epoch_end() is None
    assert projector.epoch_end() is None
    assert projector.epoch_end() is not None
    assert [h["epoch"] for h in projector.history] == [3]


def test_every_n_steps_schedule():
    projector = momos.Projector(small_model(), momos.MoMosConfig(capacity=0.1), every_n_steps=3)
    results = [projector.step() for _ in range(7)]
    assert [r is not None for r in results] == [False, False, True, False, False, True, False]
    assert projector.epoch_end() is None


def test_finalize_projects_only_when_needed():
    model = small_model()
    projector = momos.Projector(model, momos.MoMosConfig(capacity=0.1))
    assert projector.finalize() is not None       # never projected: projects
    assert projector.finalize() is None           # already a mosaic: nothing changes
    with torch.no_grad():
        model[0].weight.add_(0.01)
    assert projector.finalize() is not None
    assert momos.is_mosaic(model, projector.config, projector.codebook_motifs)


def test_finalize_ends_at_the_configured_capacity_when_training_ends_mid_annealing():
    model = small_model()
    config = momos.MoMosConfig(block_size=2, capacity=0.1)
    projector = momos.Projector(model, config, anneal_from=0.8, anneal_epochs=4)
    annealed = [projector.epoch_end().num_motifs for _ in range(2)]   # training stops here
    final = projector.finalize()
    assert final is not None and final.num_motifs == int(0.1 * final.num_blocks) < min(annealed)
    assert projector.finalize() is None


def test_a_state_saved_before_the_rename_still_restores_the_codebooks():
    model = small_model()
    projector = momos.Projector(model, momos.MoMosConfig(capacity=0.1, motif_method="persistent"))
    projector.project()
    state = projector.state_dict()
    state["codebooks"] = state.pop("codebook_motifs")   # the key of momos 0.1
    restored = momos.Projector(model, projector.config)
    restored.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(restored.codebook_motifs, projector.codebook_motifs))
    assert restored.finalize() is None


def test_state_dict_resume_reproduces_draws():
    cfg = momos.MoMosConfig(capacity=0.1, seed=3)
    uninterrupted = small_model()
    reference = momos.Projector(uninterrupted, cfg)
    reference.epoch_end()
    reference.epoch_end()

    first = small_model()
    projector = momos.Projector(first, cfg)
    projector.epoch_end()
    saved_state, saved_weights = projector.state_dict(), first.state_dict()

    resumed = small_model()
    resumed.load_state_dict(saved_weights)
    again = momos.Projector(resumed, cfg)
    again.load_state_dict(saved_state)
    again.epoch_end()
    assert torch.equal(again.last.motifs, reference.last.motifs)
    for p, q in zip(resumed.parameters(), uninterrupted.parameters()):
        assert torch.equal(p, q)
    assert again.epochs == 2 and len(again.history) == 2


@pytest.mark.parametrize("kwargs", [dict(every_n_steps=0), dict(warmup_epochs=-1)])
def test_bad_schedule(kwargs):
    with pytest.raises(ValueError):
        momos.Projector(small_model(), momos.MoMosConfig(capacity=0.1), **kwargs)


def test_end_to_end_digits_plain_loop():
    """A plain PyTorch loop plus two projector lines learns digits and ends as an exact mosaic."""
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    perm = torch.randperm(len(x))
    train, test = perm[:1400], perm[1400:]
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    cfg = momos.MoMosConfig(block_size=2, capacity=0.05, seed=0)
    projector = momos.Projector(model, cfg)
    for _ in range(8):
        for idx in train[torch.randperm(len(train))].split(64):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        projector.epoch_end()
    assert projector.finalize() is None  # projected at the last epoch's end already
    with torch.no_grad():
        accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    assert accuracy > 0.6, accuracy  # chance is 0.1
    blocks, layout = to_blocks([p.detach() for p in model.parameters()], 2)
    k = projector.last.num_motifs
    assert k == int(0.05 * layout.num_blocks)
    padded = sum(len(rows) for _, rows in layout.padding_patterns())
    assert len(torch.unique(blocks, dim=0)) <= k + padded
