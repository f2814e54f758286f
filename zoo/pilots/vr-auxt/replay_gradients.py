"""Replays pilot G (lr 1e-3, diverged at step 5,221) from its step-5,000 checkpoint and logs,
before clipping, the global gradient norm (float64 and as ``clip_grad_norm_`` computes it,
float32) and the three largest per-parameter norms of every step.

    cp runs/pilots/vr-auxt/checkpoint.pth.tar runs/pilots/vr-auxt/config.json \
       runs/pilots/vr-auxt/metrics.jsonl /tmp/replay-g/
    OMP_NUM_THREADS=1 python zoo/pilots/vr-auxt/replay_gradients.py /tmp/replay-g 5235

Writes ``/tmp/replay-g/gradients.jsonl`` (kept here as ``gradients-replay.jsonl``).
"""

import json
import sys

import torch

from compressai_feds import trainer as trainer_module
from compressai_feds.trainer import DistillationTrainer

out, stop_at = sys.argv[1], int(sys.argv[2])
trainer = DistillationTrainer(None, out, resume=True, progress=False)
names = {id(p): n.removeprefix("student.") for n, p in trainer.objective.named_parameters()}
clip_grad_norm = torch.nn.utils.clip_grad_norm_
log = open(f"{out}/gradients.jsonl", "w")


def log_then_clip(params, max_norm, *args, **kwargs):
    params = [p for p in params if p.grad is not None]
    norms = {names[id(p)]: p.grad.double().norm().item() for p in params}
    norm32 = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    top = sorted(norms.items(), key=lambda kv: -kv[1])[:3]
    record = {
        "step": trainer.step + 1,
        "norm64": float(f"{sum(v * v for v in norms.values()) ** 0.5:.4g}"),
        "norm32": float(f"{norm32.item():.4g}"),
        "top": [[name, float(f"{value:.4g}")] for name, value in top],
    }
    log.write(json.dumps(record) + "\n")
    log.flush()
    if trainer.step + 1 >= stop_at:
        raise SystemExit(0)
    return clip_grad_norm(params, max_norm, *args, **kwargs)


torch.nn.utils.clip_grad_norm_ = log_then_clip
trainer_module.MAX_SKIPPED_IN_A_ROW = 10**9  # replay past the divergence
trainer.train()
