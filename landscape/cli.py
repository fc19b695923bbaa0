"""The ``landscape`` command.

``landscape demo``: train the default model (MLP 64-256-256-10, ReLU, Adam) on the embedded
digits data, print a summary, write the run directory, then analyse the trained network with
every part of the toolkit (:mod:`landscape.report`: Hessian eigenvalues, trace and density, a
loss-surface slice and the interpolation from initialisation, the barrier between two seeds
before and after weight matching, the empirical NTK before and after training) and write
``report.json`` and ``report.png`` next to the run. ``--quick`` runs a few steps and tiny
analyses (for tests); ``--no-report`` stops after training.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_OUT = "landscape-runs/demo"


def _demo(args) -> int:
    t0 = time.perf_counter()
    import jax
    import optax

    import landscape
    from landscape.runs import save_run
    from landscape.train import train

    ds = landscape.load_data(args.data)
    model = landscape.make_model(
        "mlp",
        input_shape=ds.input_shape,
        num_outputs=ds.num_outputs,
        hidden=(256, 256),
        seed=args.seed,
    )
    num_epochs = 1 if args.quick else args.epochs
    print(f"landscape demo: {ds!r}")
    print(
        f"model: MLP {ds.input_shape[0]}-256-256-{ds.num_outputs} (ReLU), {model.num_params} parameters, "
        f"devices: {jax.device_count()} x {jax.default_backend()}"
    )
    def fit(seed, progress):
        m = model if seed == args.seed else landscape.make_model(
            "mlp", input_shape=ds.input_shape, num_outputs=ds.num_outputs, hidden=(256, 256), seed=seed
        )
        return train(
            m,
            ds.train,
            test_data=ds.test,
            optimizer=optax.adam(args.lr),
            num_epochs=num_epochs,
            batch_size=64,
            seed=seed,
            progress=progress,
            snapshot_steps=None,
        )

    result = fit(args.seed, not args.no_progress)
    h = result.history
    out = save_run(args.out, result, config={"data": ds.spec, "command": "landscape demo"})
    elapsed = time.perf_counter() - t0
    print()
    print("summary")
    print(
        f"  steps            {int(h['step'][-1])} ({num_epochs} epochs of {len(ds.train['y']) // 64} steps)"
    )
    print(f"  train loss       {h['train_loss'][0]:.4f} -> {h['train_loss'][-1]:.4f}")
    print(f"  test loss        {h['test_loss'][0]:.4f} -> {h['test_loss'][-1]:.4f}")
    print(f"  train accuracy   {h['train_accuracy'][-1]:.4f}")
    print(f"  test accuracy    {h['test_accuracy'][-1]:.4f}")
    print(f"  parameters       {model.num_params}")
    print(
        f"  training time    {result.elapsed:.1f} s (total {elapsed:.1f} s incl. start-up and compilation)"
    )
    print(f"  run directory    {Path(out).resolve()}")
    if not args.no_report:
        from landscape.report import ReportSizes, analysis_report

        t1 = time.perf_counter()
        analysis_report(
            out,
            result,
            ds,
            init_params=model.params,
            train_other=lambda seed: fit(seed, False),
            sizes=ReportSizes.quick() if args.quick else ReportSizes(),
            seed=args.seed,
        )
        print(f"  report time      {time.perf_counter() - t1:.1f} s -> {Path(out).resolve() / 'report.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="landscape", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train the default model on the embedded data and report")
    demo.add_argument("--quick", action="store_true", help="a few steps only (smoke test)")
    demo.add_argument("--out", default=DEFAULT_OUT, help=f"run directory (default {DEFAULT_OUT})")
    demo.add_argument(
        "--data", default="digits", choices=["digits", "mnist1d"], help="embedded data set"
    )
    demo.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    demo.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    demo.add_argument("--seed", type=int, default=0, help="seed of initialisation and data order")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.add_argument("--no-report", action="store_true", help="train only, no analyses")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
