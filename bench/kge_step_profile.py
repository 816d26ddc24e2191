"""One KGE training step of the link-prediction task, timed beside its FLOP floor (and profiled).

    KELM_DATA_DIR=../shared/data python bench/kge_step_profile.py DATASET TRAINING DIM BATCH \
        [RECIPROCAL 1|0] [OPTIMIZER adam|adagrad] [THREADS] [--prof]
    e.g. python bench/kge_step_profile.py fb15k-237 1-n 256 1024 1 adam 2 --prof

ComplEx; 1-N/1-vs-all with cross-entropy, negative sampling with 32 negatives and the margin loss.
Prints the mean step time over 10 steps (after 3 warm-up steps), the time of the step's three bare
(queries x D) x (D x E) matmuls, their ratio, and with --prof the torch profiler's table of 3 steps.
"""

import sys
import time

import torch

from kelm.tasks.link_prediction import LinkPredictionConfig, LinkPredictionTask

ds, training, dim, B = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rec = (sys.argv[5] if len(sys.argv) > 5 else "1") == "1"
opt_name = sys.argv[6] if len(sys.argv) > 6 else "adam"
torch.set_num_threads(int(sys.argv[7]) if len(sys.argv) > 7 else 2)
kw = dict(loss="margin", num_negatives=32) if training == "negative-sampling" else dict(loss="ce")
cfg = LinkPredictionConfig(dataset=ds, model="complex", dim=dim, training=training, reciprocal=rec, **kw)
task = LinkPredictionTask(cfg)
model = task.build_model()
params = list(model.parameters())
opt = (
    torch.optim.Adam(params, lr=1e-3, fused=True)
    if opt_name == "adam"
    else torch.optim.Adagrad(params, lr=0.1, fused=True)
)
data = task.train_data()
idx = list(range(len(data)))


def step(i):
    batch = task.collate([data[j] for j in idx[i * B : (i + 1) * B]])
    loss, _ = task.loss(model, batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


for i in range(3):
    step(i)
t, n = time.perf_counter(), 10
for i in range(3, 3 + n):
    step(i)
dt = (time.perf_counter() - t) / n
E = task.tensors.num_entities
q = B * (1 if rec or training == "1-n" else 2)
flops = 6 * q * E * dim
ent, qq, g = torch.randn(E, dim), torch.randn(q, dim), torch.randn(q, E)


def floor() -> None:
    torch.mm(qq, ent.T)
    torch.mm(g, ent)
    torch.mm(g.T, qq)


floor()
floor()
t = time.perf_counter()
for _ in range(5):
    floor()
fl = (time.perf_counter() - t) / 5
print(f"step {dt * 1000:.0f} ms  floor {fl * 1000:.0f} ms  ratio {dt / fl:.2f}  {flops / dt / 1e9:.0f} GFLOP/s")
if "--prof" in sys.argv:
    from torch.profiler import profile

    with profile() as p:
        for i in range(13, 16):
            step(i)
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
