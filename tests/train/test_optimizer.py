"""`build_adamw`: the fused kernel where the device has it, the same update as the reference AdamW."""

import torch

from dinov3_us.train.optimizer import adamw_implementation, build_adamw


def _step(opt_factory, seed: int = 0) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    groups = [{"params": [model[0].weight, model[2].weight], "weight_decay": 0.04},
              {"params": [model[0].bias, model[2].bias], "weight_decay": 0.0}]
    opt = opt_factory(groups)
    for group in opt.param_groups:
        group["lr"] = 1e-2
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(32, 8)).square().mean().backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_cpu_parameters_use_the_fused_kernel():
    opt = build_adamw([{"params": [torch.nn.Parameter(torch.zeros(3))]}])
    assert opt.defaults["fused"] is True and adamw_implementation(opt.param_groups[0]["params"]) == "fused"


def test_integer_or_meta_parameters_fall_back_to_foreach():
    assert adamw_implementation([torch.zeros(3, device="meta")]) == "foreach"
    assert adamw_implementation([]) == "foreach"


def test_fused_update_matches_the_reference_adamw():
    fused = _step(lambda g: build_adamw(g, betas=(0.9, 0.99)))
    reference = _step(lambda g: torch.optim.AdamW(g, lr=0.0, betas=(0.9, 0.99), foreach=False))
    moved = _step(lambda g: torch.optim.SGD(g, lr=0.0))  # lr 0: no update at all
    for a, b, c in zip(fused, reference, moved):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert not torch.equal(a, c)
