"""The CUDA path: masking, training, artifacts and regenerated weights on a GPU.

Skipped where CUDA is absent. On a GPU machine: ``python -m pytest tests/test_cuda.py``, then
``python benchmarks/topk.py`` also times the top-k methods on the GPU.
"""
import pytest
import torch
from torch import nn

import pemn
from pemn.masking import current_mask, num_kept, topk_mask
from pemn.models import create_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

STRATEGIES = [pemn.Mask(), pemn.RP(ratio=1e-3)]


@pytest.fixture(autouse=True)
def no_tf32():
    """TF32 convolutions (cuDNN's default on Ampere and later) differ from fp32 by ~1e-3."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _model(strategy, device: str) -> nn.Module:
    model = create_model("convmixer_64_d4", in_channels=1).to(device)
    return pemn.apply_(model, strategy, seed=3)


def _scores(kind: str, n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(n)
    if kind == "few":  # thousands of ties at the boundary
        return torch.randint(-3, 4, (n,), generator=gen).float()
    return torch.randn(n, generator=gen)


@pytest.mark.parametrize("n", [100, 4097, 300_000, 3_000_000])
@pytest.mark.parametrize("kind", ["randn", "few"])
@pytest.mark.parametrize("keep", [0.5, 1e-3])
def test_topk_on_cuda_equals_the_cpu_mask(n, kind, keep):
    scores = _scores(kind, n)
    on_gpu = topk_mask(scores.cuda(), keep)
    assert on_gpu.is_cuda and int(on_gpu.sum()) == num_kept(n, keep)
    assert torch.equal(on_gpu.cpu(), topk_mask(scores, keep))


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: type(s).__name__)
def test_regenerated_weights_identical_on_cpu_and_cuda(strategy):
    cpu, gpu = _model(strategy, "cpu"), _model(strategy, "cuda")
    cpu_buffers = dict(cpu.named_buffers())
    fixed = [(n, b) for n, b in gpu.named_buffers() if n.endswith("_fixed")]
    assert fixed and all(b.is_cuda for _, b in fixed)
    for name, b in fixed:
        assert torch.equal(b.cpu(), cpu_buffers[name]), name


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: type(s).__name__)
def test_training_step_on_cuda(strategy):
    model = _model(strategy, "cuda")
    fixed = {n: b.clone() for n, b in model.named_buffers() if n.endswith("_fixed")}
    scores = {n: p for n, p in model.named_parameters() if n.endswith("_scores")}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randn(8, 1, 28, 28, device="cuda")
    loss = nn.functional.cross_entropy(model(x), torch.arange(8, device="cuda") % 10)
    loss.backward()
    assert all(p.grad is not None and p.grad.is_cuda for p in scores.values())
    before = {n: p.detach().clone() for n, p in scores.items()}
    opt.step()
    assert any(not torch.equal(p, before[n]) for n, p in scores.items())
    for n, b in model.named_buffers():
        if n in fixed:
            assert torch.equal(b, fixed[n]), n
    # The mask on the GPU is the one the CPU would pick from the same scores.
    for _, module in model.named_modules():
        for name in pemn.masking.masked_names(module):
            cpu_scores = getattr(module, name + "_scores").detach().cpu()
            expected = topk_mask(cpu_scores, module._pemn_keep_ratio).bool()
            assert torch.equal(current_mask(module, name).cpu(), expected)


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("form", pemn.artifact.FORMS)
def test_pack_and_load_on_cuda(tmp_path, strategy, form):
    model = _model(strategy, "cuda").eval()
    path = tmp_path / "model.pemn"
    pemn.artifact.save(model, path)
    x = torch.randn(4, 1, 28, 28, device="cuda")
    loaded = pemn.artifact.load(path, form=form, device="cuda")
    assert all(t.is_cuda for t in [*loaded.parameters(), *loaded.buffers()])
    on_cpu = pemn.artifact.load(path, form=form, device="cpu")
    for (name, a), (_, b) in zip(loaded.state_dict().items(), on_cpu.state_dict().items()):
        assert torch.equal(a.cpu(), b), name  # bit-identical regeneration on both devices
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
        torch.testing.assert_close(loaded(x).cpu(), on_cpu(x.cpu()), rtol=1e-4, atol=1e-4)
