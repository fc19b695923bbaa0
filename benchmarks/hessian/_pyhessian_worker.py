"""PyHessian side of bench_pyhessian.py (runs in .venv-torch; one JSON command per stdin line).

Loads the SAME weights and data the JAX side uses (an .npz written by the driver), builds the
64-256-256-10 ReLU MLP in PyTorch and answers timing commands. PyHessian 0.1 calls the removed
``torch.eig`` in ``density()``; we patch that one call here (``torch.eig`` -> symmetric
``torch.linalg.eigh`` returning the old ``(n, 2)`` eigenvalue layout), as upstream did after the
release. Nothing else in PyHessian is changed; HVPs are counted by wrapping its
``hessian_vector_product`` and ``dataloader_hv_product``.
"""

import json
import sys
import time

import numpy as np
import pyhessian  # noqa: F401  (its __init__ binds the class `hessian` over the module name)
import torch

ph = sys.modules["pyhessian.hessian"]


def _eig(T, eigenvectors=True):  # the patched call (PyHessian density() only)
    w, V = torch.linalg.eigh(T)
    return torch.stack([w, torch.zeros_like(w)], 1), V


torch.eig = _eig

COUNT = {"hvp": 0}
_hvp = ph.hessian_vector_product


def _counted(gradsH, params, v):
    COUNT["hvp"] += 1
    return _hvp(gradsH, params, v)


ph.hessian_vector_product = _counted

z = np.load(sys.argv[1])
x = torch.tensor(z["x"], dtype=torch.float32)
y = torch.tensor(z["y"], dtype=torch.long)
model = torch.nn.Sequential(
    torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
)
with torch.no_grad():
    for i, layer in enumerate([model[0], model[2], model[4]]):
        layer.weight.copy_(torch.tensor(z[f"layers/{i}/kernel"]).T)
        layer.bias.copy_(torch.tensor(z[f"layers/{i}/bias"]))
crit = torch.nn.CrossEntropyLoss()
print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)

for line in sys.stdin:
    cmd = json.loads(line)
    torch.manual_seed(cmd.get("seed", 0))
    COUNT["hvp"] = 0
    task = cmd["task"]
    t0 = time.perf_counter()
    h = ph.hessian(model, crit, data=(x, y), cuda=False)  # one batch = all 1797 examples
    t1 = time.perf_counter()
    out = {}
    if task == "top1":
        vals, _ = h.eigenvalues(top_n=1)
        out["values"] = [float(v) for v in vals]
    elif task == "top5":
        vals, _ = h.eigenvalues(top_n=5)
        out["values"] = [float(v) for v in vals]
    elif task == "trace":
        tr = h.trace()
        out["trace"] = float(np.mean(tr))
        out["probes"] = len(tr)
    elif task.startswith("density"):
        nodes, weights = h.density(iter=cmd["iter"], n_v=cmd["n_v"])
        out["top_node"] = float(max(max(n) for n in nodes))
        out["slq_trace"] = float(np.mean([np.dot(n, w) for n, w in zip(nodes, weights)]) * sum(p.numel() for p in model.parameters()))
    elif task == "hvp":  # cost of one product and one gradient
        v = [torch.randn_like(p) for p in h.params]
        ts = []
        for _ in range(cmd.get("n", 20)):
            a = time.perf_counter()
            ph.hessian_vector_product(h.gradsH, h.params, v)
            ts.append(time.perf_counter() - a)
        gs = []
        for _ in range(cmd.get("n", 20)):
            a = time.perf_counter()
            model.zero_grad()
            crit(model(x), y).backward()
            gs.append(time.perf_counter() - a)
        out["hvp_s"] = float(np.median(ts))
        out["grad_s"] = float(np.median(gs))
    t2 = time.perf_counter()
    out.update(task=task, time=t2 - t0, time_call=t2 - t1, hvps=COUNT["hvp"])
    print(json.dumps(out), flush=True)
