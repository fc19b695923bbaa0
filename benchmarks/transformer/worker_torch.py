"""One fresh process of the transformer benchmark, PyTorch side (runs in ``.venv-torch``, see
``benchmarks/envs/make_torch_env.sh``). Driven by ``run.py``.

    python worker_torch.py TASK NPZ CONFIG_JSON

The network is ``make_model("transformer")``'s, written again in PyTorch with the SAME layout
and the SAME float32 weights (the driver's npz, keyed by our parameter paths; no transposes: the
kernels are used as ``x @ W`` and through the same einsums): ViT patches in row-major order,
each flattened ``(row, column, channel)``; a dense patch embedding; learned positions; pre-LN
blocks ``h + MHA(LN1 h)``, ``h + fc2 gelu(fc1 LN2 h)`` (exact erf GELU, LayerNorm epsilon 1e-6
with scale and bias); attention with kernels ``(d, heads, d_head)`` and scores scaled by
``1 / sqrt(d_head)``, softmax over the keys; output kernel ``(heads, d_head, d)``; a final
LayerNorm, the mean over tokens, a dense head; mean cross-entropy.

TASK ``check``: prints the loss, logits and gradient (flattened in our parameter order) on the
npz's data, which the driver compares with ours (float32 rounding). TASK ``topk``: PyHessian 0.1
``hessian(model, criterion, data=(x, y), cuda=False).eigenvalues(top_n=k)`` (power iteration
with deflation, its defaults ``maxIter=100, tol=1e-3``), all ``N`` examples in one batch (its
fastest mode: it keeps the gradient's graph); first call, then ``repeats`` warm calls, one JSON
line with the times, products (``hessian_vector_product`` calls, counted by wrapping it) and
peak RSS. Nothing in PyHessian is patched for this task.
"""

import json
import resource
import sys
import time

T_START = time.perf_counter()
import numpy as np  # noqa: E402
import pyhessian  # noqa: E402,F401  (its __init__ binds the class `hessian` over the module name)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ph = sys.modules["pyhessian.hessian"]
T_IMPORT = time.perf_counter() - T_START

COUNT = {"hvp": 0}
_hvp = ph.hessian_vector_product


def _counted(gradsH, params, v):
    COUNT["hvp"] += 1
    return _hvp(gradsH, params, v)


ph.hessian_vector_product = _counted


class ViT(torch.nn.Module):
    """make_model("transformer", ...)'s pre-LN encoder; parameters keyed by our paths."""

    def __init__(self, z, paths, cfg):
        super().__init__()
        self.paths = list(paths)
        self.p = torch.nn.ParameterDict(
            {
                q.replace("/", "__"): torch.nn.Parameter(torch.tensor(np.asarray(z["p/" + q])))
                for q in paths
            }
        )
        self.cfg = cfg

    def w(self, path):
        return self.p[path.replace("/", "__")]

    def ln(self, h, prefix):
        return F.layer_norm(
            h, (h.shape[-1],), self.w(prefix + "/scale"), self.w(prefix + "/bias"), eps=1e-6
        )

    def forward(self, x):
        n, hh, ww, c = x.shape
        p = self.cfg["patch"]
        x = (
            x.reshape(n, hh // p, p, ww // p, p, c)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(n, (hh // p) * (ww // p), p * p * c)
        )
        h = x @ self.w("embed/kernel") + self.w("embed/bias")
        h = h + self.w("pos")[None]
        for b in range(self.cfg["depth"]):
            pre = f"blocks/{b}/"
            a = self.ln(h, pre + "ln1")
            q = torch.einsum("ntd,dhk->nthk", a, self.w(pre + "attn/query/kernel")) + self.w(
                pre + "attn/query/bias"
            )
            k = torch.einsum("ntd,dhk->nthk", a, self.w(pre + "attn/key/kernel")) + self.w(
                pre + "attn/key/bias"
            )
            v = torch.einsum("ntd,dhk->nthk", a, self.w(pre + "attn/value/kernel")) + self.w(
                pre + "attn/value/bias"
            )
            s = torch.einsum("nqhk,nshk->nhqs", q, k) * (1.0 / float(np.sqrt(q.shape[-1])))
            att = torch.softmax(s, dim=-1)
            y = torch.einsum("nhqs,nshk->nqhk", att, v)
            h = (
                h
                + torch.einsum("nqhk,hkd->nqd", y, self.w(pre + "attn/out/kernel"))
                + self.w(pre + "attn/out/bias")
            )
            a = self.ln(h, pre + "ln2")
            m = F.gelu(a @ self.w(pre + "mlp/fc1/kernel") + self.w(pre + "mlp/fc1/bias"))
            h = h + m @ self.w(pre + "mlp/fc2/kernel") + self.w(pre + "mlp/fc2/bias")
        h = self.ln(h, "ln_f").mean(dim=1)
        return h @ self.w("head/kernel") + self.w("head/bias")


def peak_rss_mb() -> float:
    """Peak resident memory (``VmHWM``; ``ru_maxrss`` would carry the parent's across exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def product_ms(model, crit, x, y):
    """Median milliseconds of one PyHessian product (its double backward through the kept graph)."""
    model.zero_grad(set_to_none=True)
    h = ph.hessian(model, crit, data=(x, y), cuda=False)
    v = [torch.randn_like(p) for p in h.params]
    _hvp(h.gradsH, h.params, v)
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        _hvp(h.gradsH, h.params, v)
        ts.append(time.perf_counter() - t)
    model.zero_grad(set_to_none=True)
    return 1e3 * float(np.median(ts))


def main():
    task, npz, cfg = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    t = time.perf_counter()
    z = np.load(npz)
    paths = [str(s) for s in z["paths"]]
    model = ViT(z, paths, cfg)
    x = torch.tensor(np.asarray(z["x"], np.float32))
    y = torch.tensor(np.asarray(z["y"]), dtype=torch.long)
    crit = torch.nn.CrossEntropyLoss()
    t_setup = time.perf_counter() - t
    if task == "check":
        model.zero_grad(set_to_none=True)
        logits = model(x)
        loss = crit(logits, y)
        loss.backward()
        grad = np.concatenate([model.w(q).grad.detach().numpy().ravel() for q in paths])
        out = {
            "loss": float(loss),
            "logits": logits.detach().numpy().tolist(),
            "grad": grad.tolist(),
        }
        print("RESULT " + json.dumps(out), flush=True)
        return
    k = cfg["k"]

    def run(r):
        torch.manual_seed(r)
        COUNT["hvp"] = 0
        model.zero_grad(set_to_none=True)  # the constructor's backward accumulates into .grad
        h = ph.hessian(model, crit, data=(x, y), cuda=False)
        vals, _ = h.eigenvalues(top_n=k)
        return {"values": [float(v) for v in vals], "products": COUNT["hvp"]}

    t = time.perf_counter()
    first = run(0)
    t_first = time.perf_counter() - t
    warm = []
    for r in range(1, cfg["repeats"] + 1):
        t = time.perf_counter()
        out = run(r)
        warm.append(time.perf_counter() - t)
    rec = {
        "side": "pyhessian",
        "task": task,
        "import_s": T_IMPORT,
        "setup_s": t_setup,
        "first_s": t_first,
        "warm_s": warm,
        "result": out,
        "first_result": {"products": first["products"]},
        "products_warm": out["products"],
        "maxrss_mb": peak_rss_mb(),
        "product_ms": product_ms(model, crit, x, y),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    print("RESULT " + json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
