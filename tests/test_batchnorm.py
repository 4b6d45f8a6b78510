"""Re-estimating BatchNorm statistics: the function, and ``reestimate_bn`` in ``momos train``."""

import copy
import itertools
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from momos.batchnorm import reestimate_batchnorm_
from momos.cli import main
from momos.data import load_dataset
from momos.runfolder import load_model
from momos.train import TrainConfig, fit, prepare, reestimate_bn, resume, train
from momos.trainconfig import UnusedOptionError

pytestmark = pytest.mark.usefixtures("one_thread")


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5), nn.BatchNorm1d(3))


def stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_the_statistics_are_the_average_over_the_batches_without_dropout():
    model = net().eval()
    inputs = [torch.randn(8, 4) * 3 + 1 for _ in range(3)]
    assert reestimate_batchnorm_(model, iter(inputs)) == 3
    with torch.no_grad():
        features = [model[0](x) for x in inputs]   # dropout off: what the layer sees at evaluation
    bn = model[2]
    assert torch.allclose(bn.running_mean, torch.stack([f.mean(0) for f in features]).mean(0), atol=1e-6)
    assert torch.allclose(bn.running_var, torch.stack([f.var(0) for f in features]).mean(0), atol=1e-5)
    assert int(bn.num_batches_tracked) == 3
    assert bn.momentum == 0.1 and not model.training and not bn.training and not model[1].training


def test_modes_are_restored():
    model = net().train()
    reestimate_batchnorm_(model, [torch.randn(8, 4)])
    assert all(m.training for m in model.modules())


def test_mappings_are_keyword_arguments():
    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(2)

        def forward(self, *, pixels):
            return self.bn(pixels)

    model = Keyword()
    reestimate_batchnorm_(model, [{"pixels": torch.full((4, 2), 5.0) + torch.arange(4.0)[:, None]}])
    assert torch.allclose(model.bn.running_mean, torch.full((2,), 6.5))


@pytest.mark.parametrize("inputs", [[], "fails"])
def test_a_failed_or_empty_pass_leaves_the_statistics(inputs):
    model = net()
    model.train()(torch.randn(16, 4))   # statistics that are not the initial ones
    before = stats(model)

    def failing():
        yield torch.randn(8, 4)
        raise RuntimeError("the data broke")

    with pytest.raises((ValueError, RuntimeError), match="no batches|the data broke"):
        reestimate_batchnorm_(model, failing() if inputs == "fails" else inputs)
    after = stats(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model[2].momentum == 0.1


def test_a_model_without_batchnorm_is_an_error():
    with pytest.raises(ValueError, match="no BatchNorm"):
        reestimate_batchnorm_(nn.Linear(2, 2), [torch.randn(3, 2)])


# --- momos train --------------------------------------------------------------------------------

def resnet(**options) -> TrainConfig:
    """ResNet-20 on digits, test accuracy 0.94 after 3 epochs (with re-estimation)."""
    return TrainConfig(dataset="digits", model="resnet20", epochs=3, **options)


def bn_stats(path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(path).items() if "running" in k}


@pytest.fixture(scope="module")
def resnet_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bn")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as conftest's one_thread: a tiny model trains faster on one
    train(resnet(), root / "stale")
    train(resnet(reestimate_bn=2), root / "reestimated")
    train(resnet(method="baseline"), root / "baseline")
    torch.set_num_threads(threads)
    return root


def epochs(path):
    return json.loads((path / "results.json").read_text())["epochs"]


def test_reestimation_changes_the_statistics_but_not_the_training(resnet_runs):
    stale, reestimated = epochs(resnet_runs / "stale"), epochs(resnet_runs / "reestimated")
    assert [e["train_loss"] for e in stale] == [e["train_loss"] for e in reestimated]
    assert [e["val_loss"] for e in stale[1:]] != [e["val_loss"] for e in reestimated[1:]]
    left = bn_stats(resnet_runs / "stale" / "final.safetensors")
    right = bn_stats(resnet_runs / "reestimated" / "final.safetensors")
    assert not any(torch.equal(left[k], right[k]) for k in left)


def test_the_training_rng_is_left_alone():
    """RandAugment draws from the global RNG; the re-estimation's draws must not shift the
    training's."""
    config = TrainConfig(dataset="digits", model="resnet20", batch_size=8, augment=True, randaugment=True,
                         reestimate_bn=2)
    data = load_dataset("digits", None)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    before = torch.get_rng_state()
    reestimate_bn(model, data, config)
    assert torch.equal(torch.get_rng_state(), before)


def test_the_saved_statistics_are_those_of_the_final_weights(resnet_runs):
    """Re-estimated again on the same batches, the final model's statistics stay; the stale
    ones of a run without re-estimation do not."""
    config = resnet(reestimate_bn=2)
    data = load_dataset("digits", None, split_seed=config.split_seed, val_fraction=config.val_fraction)
    for name, kept in (("reestimated", True), ("stale", False)):
        model = load_model(resnet_runs / name)
        before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
        reestimate_bn(model, data, config)
        after = {k: v for k, v in model.state_dict().items() if "running" in k}
        same = all(torch.allclose(before[k], after[k], rtol=1e-4, atol=1e-6) for k in before)
        assert same == kept, name


def test_a_resumed_run_repeats_the_reestimation(resnet_runs, tmp_path):
    out = tmp_path / "run"
    fit(prepare(resnet(reestimate_bn=2), out), stop_after_epoch=1)
    resume(out)
    for name in ("final.safetensors", "best.safetensors"):
        left, right = load_file(resnet_runs / "reestimated" / name), load_file(out / name)
        assert all(torch.equal(left[k], right[k]) for k in left), name


def test_bad_reestimation_options_are_named(capsys, tmp_path):
    with pytest.raises(UnusedOptionError, match="reestimate_bn is a MoMos option"):
        TrainConfig(method="baseline", reestimate_bn=4)
    with pytest.raises(ValueError, match="reestimate_bn must be >= 0"):
        TrainConfig(reestimate_bn=-1)
    assert main(["train", "--model", "mlp", "--reestimate-bn", "2", "--out", str(tmp_path / "a"), "--quiet"]) == 2
    assert "model mlp has no BatchNorm layer" in capsys.readouterr().err
    with pytest.raises(ValueError, match="reestimate_bn 43 is more than the 42 training batches of 32"):
        prepare(resnet(reestimate_bn=43), tmp_path / "b")
    assert not any(tmp_path.iterdir())


def test_configs_stored_before_the_option_read_as_without_it():
    stored = TrainConfig(model="resnet20").to_dict()
    del stored["reestimate_bn"]
    assert TrainConfig.from_dict(stored).reestimate_bn == 0


# --- momos.finetune and momos compress ------------------------------------------------------------

def convnet() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10))


def image_batches():
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 1, 8, 8, generator=generator) * 2 + 1, torch.randint(0, 10, (16,), generator=generator))
            for _ in range(3)]


@pytest.mark.parametrize("steps", [0, 4])
def test_finetune_reestimates_the_statistics_of_the_final_weights(steps):
    """After ``finetune``, re-estimating on the same batches changes nothing: the statistics
    are those of the final mosaic, not of the weights before the projection."""
    from momos import MoMosConfig, finetune

    model, batches = convnet(), image_batches()
    model.train()(torch.randn(64, 1, 8, 8) * 5)   # running statistics of other activations
    finetune(model, MoMosConfig(block_size=4, capacity=0.05), batches, steps=steps, reestimate_bn=2)
    stored = stats(model)
    reestimate_batchnorm_(model, [x for x, _ in batches[:2]])
    again = stats(model)
    assert all(torch.allclose(stored[k], again[k], rtol=1e-5, atol=1e-6) for k in stored)


@pytest.mark.parametrize("steps", [0, 4])
def test_finetune_reestimates_on_bn_batches_after_the_projection_and_on_its_batches_after_tuning(steps):
    """The projected weights expect the statistics of inputs like those they were trained on
    (``bn_batches``); after fine-tuning, those of the fine-tuning batches."""
    from momos import MoMosConfig, finetune

    model, batches = convnet(), image_batches()
    augmented = [(x.flip(-1) * 3, y) for x, y in batches]   # other statistics than the fine-tuning batches'
    finetune(model, MoMosConfig(block_size=4, capacity=0.05), batches, steps=steps, reestimate_bn=2,
             bn_batches=augmented)
    stored = stats(model)
    on_other = copy.deepcopy(model)
    expected, other = (augmented, batches) if steps == 0 else (batches, augmented)
    reestimate_batchnorm_(on_other, [x for x, _ in other[:2]])
    reestimate_batchnorm_(model, [x for x, _ in expected[:2]])
    assert all(torch.allclose(stored[k], stats(model)[k], rtol=1e-5, atol=1e-6) for k in stored)
    assert not torch.allclose(stored["1.running_mean"], stats(on_other)["1.running_mean"])


def test_finetune_without_batchnorm_is_refused_before_projecting():
    from momos import MoMosConfig, finetune

    model = nn.Linear(8, 4)
    before = model.weight.detach().clone()
    with pytest.raises(ValueError, match="reestimate_bn: Linear has no BatchNorm"):
        finetune(model, MoMosConfig(block_size=4, capacity=0.25), [torch.randn(2, 8)], steps=0, reestimate_bn=1)
    assert torch.equal(model.weight, before)


def test_compress_projects_a_resnet_with_reestimated_statistics(resnet_runs, tmp_path, capsys):
    """``momos compress --reestimate-bn`` on a ResNet-20 trained without MoMos: the projected
    stage is evaluated with the statistics of the mosaic. With the stale ones this projection
    agrees with the original on 13% of the test images, with re-estimated ones on 94%."""
    agreement = {}
    for extra in ([], ["--reestimate-bn", "2"]):
        out = tmp_path / f"out{len(extra)}"
        assert main(["compress", str(resnet_runs / "baseline"), "-o", str(out), "--steps", "0",
                     "--block-size", "4", "--capacity", "0.01", *extra]) == 0
        record = json.loads((out / "results.json").read_text())
        assert record["config"]["finetune"]["reestimate_bn"] == (2 if extra else 0)
        agreement[bool(extra)] = record["projected"]["agreement"]
    assert agreement[True] > 0.9 > 0.5 > agreement[False]


def test_compress_reestimates_on_images_augmented_as_the_source_trained(resnet_runs, tmp_path):
    """The ResNet's statistics come from cropped and flipped training images when its run
    trained on them: the weights expect those (plain images cost the full-data ResNet-20 3.9
    points). Here a copy of the digits baseline whose config says it trained augmented."""
    from momos.compress import CompressConfig, load_data
    from momos.data import batches
    from momos.runfolder import load_model_weights_
    from momos.sources import load_source

    source_dir = tmp_path / "augmented"
    shutil.copytree(resnet_runs / "baseline", source_dir)
    record = json.loads((source_dir / "results.json").read_text())
    record["config"]["augment"] = True
    (source_dir / "results.json").write_text(json.dumps(record))
    out = tmp_path / "out"
    assert main(["compress", str(source_dir), "-o", str(out), "--steps", "0", "--block-size", "4",
                 "--capacity", "0.01", "--reestimate-bn", "2"]) == 0

    data = load_data(CompressConfig(source=str(source_dir)), load_source(source_dir))
    first = [x for x, _ in itertools.islice(data.batchnorm, 2)]
    digits = load_dataset("digits", None, download=False)
    augmented = batches(digits.train, digits.info, 64, generator=torch.Generator().manual_seed(0), augment=True,
                        drop_last=True)
    assert all(torch.equal(x, expected) for x, (expected, _) in zip(first, augmented))
    assert not torch.equal(first[0], next(iter(data.train))[0])
    # every re-estimation sees the same batches; every fine-tuning pass has its own order
    assert torch.equal(next(iter(data.batchnorm))[0], first[0])
    assert not torch.equal(next(iter(data.train))[0], next(iter(data.train))[0])

    projected = load_file(out / "projected.safetensors")
    model = load_source(source_dir).model
    load_model_weights_(model, projected)
    reestimate_batchnorm_(model, first)
    assert all(torch.allclose(value, projected[name], rtol=1e-5, atol=1e-6)
               for name, value in stats(model).items() if "running" in name)


def test_the_after_the_fact_script_tests_each_run_again(resnet_runs, tmp_path, capsys):
    """experiments/reproduction/reestimate_bn.py: the recorded accuracy is reproduced as loaded,
    and the re-estimated one is that of ``reestimate_bn`` on the run's own batches."""
    import importlib.util
    from pathlib import Path

    from momos.report import read_csv_table

    path = Path(__file__).resolve().parents[1] / "experiments" / "reproduction" / "reestimate_bn.py"
    spec = importlib.util.spec_from_file_location("reestimate_bn_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "stale").symlink_to(resnet_runs / "stale")
    # the same run as if it had trained on cropped and flipped images
    shutil.copytree(resnet_runs / "stale", runs / "stale-augmented")
    record = json.loads((runs / "stale-augmented" / "results.json").read_text())
    record["config"]["augment"] = True
    (runs / "stale-augmented" / "results.json").write_text(json.dumps(record))
    # a row of a run folder that is gone, measured before the plain column existed, stays
    (tmp_path / "table.csv").write_text(
        "run,method,test_acc,test_acc_as_loaded,test_acc_reestimated,change_points,batches,batch_size\n"
        "gone,momos,0.8655,0.8655,0.879,1.35,40,128\n")
    script.main(["--runs", str(runs), "--out", str(tmp_path / "table.csv"), "--batches", "2", "--threads", "1"])
    gone, row, augmented = read_csv_table(tmp_path / "table.csv")
    assert gone["test_acc_reestimated"] == 0.879 and gone["test_acc_reestimated_plain"] is None
    recorded = json.loads((resnet_runs / "stale" / "results.json").read_text())["summary"]["test_acc"]
    assert row["run"] == "stale" and row["test_acc"] == row["test_acc_as_loaded"] == round(recorded, 4)
    reestimated = json.loads((resnet_runs / "reestimated" / "results.json").read_text())["summary"]["test_acc"]
    assert row["test_acc_reestimated"] == round(reestimated, 4)   # the same training, re-estimated as it trained
    # it trained on plain images: the plain column re-estimates on the same batches
    assert row["test_acc_reestimated_plain"] == row["test_acc_reestimated"]
    # the plain column ignores the run's augmentation; the re-estimation as it trained does not
    assert augmented["test_acc_reestimated_plain"] == row["test_acc_reestimated_plain"]
    assert augmented["test_acc_reestimated"] != row["test_acc_reestimated"]
    assert "| stale |" in capsys.readouterr().out
