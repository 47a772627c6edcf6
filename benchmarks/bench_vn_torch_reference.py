#!/usr/bin/env python
"""Train-step time of the reference PyTorch VN-PointNet (the paper's public code), plain and relaxed.

The reference code is *not* part of this repository: pass the folder ``PCClassification/vn-pointnet`` of a
checkout of the paper's repository (``StefanosPert/Equivariant_Optimization_CR``) with ``--reference``; it is
imported from there (``models.pointnet_equi.pointnet_cls`` and ``pointnet_cls_dual``) and run unchanged on the
CPU.  It hard-codes CUDA in three places (``torch.device('cuda')`` in the kNN graph features and
``.to('cuda')`` of the generator matrices); the import here redirects those to the CPU at run time
(a ``torch`` stand-in for the layers module whose ``device`` is the CPU, and ``Tensor.to('cuda')`` mapped to
the CPU while the model is built).  Needs ``torch`` (``pip install torch``; not a dependency of the package).

Variants, as in the reference ``train_cls.py`` (batch of ``[B, 3, N]`` points, Adam 1e-3, weight decay 1e-4):

* ``torch_plain``: ``pointnet_cls.get_model`` called with ``equiv=True`` (the equivariant model; its unused
  dense branch weights get no gradient), ``nll_loss``, backward, Adam step;
* ``torch_relaxed``: ``pointnet_cls_dual.get_model`` with ``equiv=False``, mixing coefficient 1, loss
  ``nll + 0.01 (sqrt(LD) + sqrt(N))`` with the reference's own penalty terms, backward, Adam step;
* ``torch_projected``: the dual model with ``equiv=True`` in ``eval()`` mode under ``torch.no_grad()``.

Standalone it times the variants in turn (``--repeats`` rounds of ``--steps`` steps); with ``--worker`` it
speaks the protocol of ``bench_vn_models.py``, which runs it side by side with the Keras variants
(``bench_vn_models.py --torch-reference PATH``).  FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` on one
step (matmul-type ops, forward and backward).

Example::

    python benchmarks/bench_vn_torch_reference.py --reference /path/to/PCClassification/vn-pointnet \\
        --points 300 --batch 24 --steps 1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types

PROTO = "@@BENCH "
VARIANTS = ("torch_plain", "torch_relaxed", "torch_projected")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", required=True, help="folder PCClassification/vn-pointnet of the reference code")
    p.add_argument("--points", type=int, default=300)
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--no-flops", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


def import_reference(path):
    """``(pointnet_cls, pointnet_cls_dual)`` modules of the reference code, their CUDA calls sent to the CPU."""
    import torch

    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, "models", "pointnet_equi", "layers.py")):
        raise SystemExit(
            f"--reference {path}: no models/pointnet_equi/layers.py there; pass the folder "
            "PCClassification/vn-pointnet of the reference repository"
        )
    sys.path.insert(0, path)
    import models.pointnet_equi.layers as layers  # noqa: E402  (the reference code)

    class CpuTorch(types.ModuleType):
        """``torch`` for the reference layers module, with ``torch.device(...)`` the CPU."""

        def __getattr__(self, name):
            return getattr(torch, name)

    shim = CpuTorch("torch")
    shim.device = lambda *args, **kwargs: torch.device("cpu")
    layers.torch = shim
    import models.pointnet_equi.pointnet_cls as cls  # noqa: E402
    import models.pointnet_equi.pointnet_cls_dual as cls_dual  # noqa: E402

    return cls, cls_dual


class _CudaToCpu:
    """While active, ``Tensor.to('cuda')`` returns the CPU tensor (the reference builds generators on CUDA)."""

    def __enter__(self):
        import torch

        self._to = torch.Tensor.to
        original = self._to

        def to(tensor, *args, **kwargs):
            args = tuple("cpu" if isinstance(a, str) and a.startswith("cuda") else a for a in args)
            if isinstance(kwargs.get("device"), str) and kwargs["device"].startswith("cuda"):
                kwargs["device"] = "cpu"
            return original(tensor, *args, **kwargs)

        torch.Tensor.to = to
        return self

    def __exit__(self, *exc):
        import torch

        torch.Tensor.to = self._to


def make_step(args, variant):
    """``(step(i) -> tensor, model, info)`` for one variant."""
    import torch
    import torch.nn.functional as F

    cls, cls_dual = import_reference(args.reference)
    torch.manual_seed(args.seed)
    ref_args = types.SimpleNamespace(pooling="mean")
    with _CudaToCpu():
        module = cls if variant == "torch_plain" else cls_dual
        model = module.get_model(ref_args, 40, normal_channel=False)
    g = torch.Generator().manual_seed(args.seed)
    batches = [
        (torch.randn(args.batch, 3, args.points, generator=g), torch.randint(0, 40, (args.batch,), generator=g))
        for _ in range(2)
    ]
    info = {
        "variant": variant,
        "params": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if variant == "torch_projected":
        model.eval()

        def step(i):
            with torch.no_grad():
                return model(batches[i % 2][0], True, 0.0)[0]

        return step, model, info

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4)
    model.train()

    def step(i):
        points, target = batches[i % 2]
        optimizer.zero_grad()
        if variant == "torch_plain":
            pred, _ = model(points, True, 0.0)
            loss = F.nll_loss(pred, target)
        else:
            pred, _, n = model(points, False, 1.0)
            loss = F.nll_loss(pred, target) + 0.01 * (torch.sqrt(n[0]) + torch.sqrt(n[1]))
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step, model, info


def count_flops(step):
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:  # pragma: no cover - old torch
        return None
    counter = FlopCounterMode(display=False)
    with counter:
        step(0)
    return int(counter.get_total_flops())


def _send(obj):
    sys.stdout.write(PROTO + json.dumps(obj) + "\n")
    sys.stdout.flush()


def worker(args):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    step, model, info = make_step(args, args.worker)
    for i in range(max(args.warmup, 1)):
        step(i)
    info["build_warmup_s"] = time.perf_counter() - t0
    if not args.no_flops:
        info["flops_step"] = count_flops(step)
    info["relaxed_layers"] = 0
    _send({"ready": info})
    from _common import answer_timing_requests, peak_rss_mib

    n = max(args.warmup, 1)

    def run(steps):
        nonlocal n
        for _ in range(steps):
            step(n)  # torch on the CPU: finished when it returns
            n += 1

    answer_timing_requests(run, _send)

    info.update(peak_rss_mib=peak_rss_mib(), peak_delta_mib=float("nan"))
    _send({"done": info})


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.worker:
        return worker(args)
    import statistics

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    steps = {}
    for v in [v.strip() for v in args.variants.split(",") if v.strip()]:
        step, _, info = make_step(args, v)
        for i in range(max(args.warmup, 1)):
            step(i)
        steps[v] = step
        print(f"ready {v}: {info['params']:,} parameters", flush=True)
    times = {v: [] for v in steps}
    for r in range(args.repeats):
        for v, step in steps.items():
            t0 = time.perf_counter()
            for i in range(args.steps):
                step(i)
            times[v].append(1000.0 * (time.perf_counter() - t0) / args.steps)
        print(
            f"round {r + 1} (load {os.getloadavg()[0]:.2f}): " + "  ".join(f"{v}={times[v][-1]:.0f} ms" for v in steps),
            flush=True,
        )
    for v, ts in times.items():
        print(f"{v:<16s} median {statistics.median(ts):8.0f} ms/step")
    return times


if __name__ == "__main__":
    main()
