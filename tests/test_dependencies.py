"""The library needs only torch, numpy and safetensors; a job that needs an extra names it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

OPTIONAL = ("torchvision", "sklearn", "tqdm", "yaml", "pybdm", "zstandard", "matplotlib", "timm", "lightning",
            "transformers", "numba")


def _run(code: str) -> subprocess.CompletedProcess:
    blocked = "".join(f"sys.modules[{name!r}] = None\n" for name in OPTIONAL)   # import fails as if absent
    return subprocess.run([sys.executable, "-c", "import sys\n" + blocked + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=300)


def test_the_library_works_with_the_core_dependencies_alone(tmp_path):
    result = _run(f"""
        import torch, momos
        from torch import nn
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        cfg = momos.MoMosConfig(block_size=4, capacity=0.1, normalize="channel")
        result = momos.finetune(model, cfg, [torch.randn(8, 16)], steps=3)
        momos.save(model, {str(tmp_path / "m.momos")!r}, cfg, scales=result.stats.scales)
        state = momos.load({str(tmp_path / "m.momos")!r})
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_a_command_that_needs_a_missing_extra_names_it():
    result = _run("""
        from momos.cli import main
        raise SystemExit(main(["train", "--epochs", "1", "--out", "unused"]))
    """)
    assert result.returncode == 2
    assert "pip install 'momos[train]'" in result.stderr and "Traceback" not in result.stderr
