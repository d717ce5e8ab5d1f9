"""Verification benchmark (issue 11): does approximate unlearning make a memorising model look retrained?

    .venv/bin/python bench/bench_verify.py [--seeds 5] [--tuning-seeds 3] [--threads 1]

Data (per seed): 2,000 training rows of a noisy linear rule in 16 features; the forget set is 40 of them
labelled against the rule and seen 5× an epoch, so the original MLP (hidden 64, 15 epochs) memorises them;
non-members are 200 held-out rows mislabelled the same way (a model that never saw the forget set cannot
tell them apart: AUC ≈ 0.5), test rows are 1,000 clean held-out rows. Per seed: the original, a retrain
without the forget set (the reference), and NegGrad+ and SCRUB on the original with the planner's retain
sample (`RETAIN_SAMPLE` retained rows per forget row). Reported, mean ± s.e. over the evaluation seeds: the
forget set's membership AUC (loss-threshold and learned attack, as the verifier computes them), test accuracy,
and compute (wall seconds, unlearning vs retraining).

Hyper-parameters are tuned on separate tuning seeds (1000+), never the evaluation seeds (0…): a small grid
per method, scored by |AUC − retrained AUC| (both attacks) with test accuracy within 1 point of the retrained model,
then frozen. Goal: unlearned AUC within 0.03 of the retrained one, test accuracy within 1 point, ≥ 10× less
compute than retraining. Writes bench/out/verify.json.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import code_version  # noqa: E402

from expunge.orchestrator import approximate, mia  # noqa: E402
from expunge.orchestrator.trainers import mlp  # noqa: E402

D, N_TRAIN, N_FORGET, N_NON, N_TEST, REPEAT, HIDDEN, EPOCHS = 16, 2000, 40, 200, 1000, 5, 64, 15

GRIDS = {
    # The first run's grids (epochs 2/5, lr 0.01/0.02, α 0.9/0.95; steps 4/6, max_steps 2/3, lr 0.02/0.05) chose
    # their edges (epochs 5, lr 0.02; max_steps 3, lr 0.05): widened past them.
    "neggrad_plus": [dict(epochs=e, lr=lr, alpha=a) for e, lr, a in itertools.product((5, 7), (0.02, 0.04), (0.8, 0.9))],
    # The second run's SCRUB (steps 5, max_steps 3, lr 0.1) lost 7.6 points of test accuracy against the retrained
    # model, which the score did not see (it compared with the original, itself 4.8 points below the retrained
    # one): the score now compares with the retrained model, and the grid adds the cross-entropy weight γ.
    "scrub": [dict(steps=5, max_steps=3, lr=lr, gamma=g) for lr, g in itertools.product((0.02, 0.05, 0.1),
                                                                                        (0.5, 1.0, 2.0))],
}
METHODS = {"neggrad_plus": approximate.neggrad_plus, "scrub": approximate.scrub}


def data(seed: int):
    g = torch.Generator().manual_seed(seed)
    n = N_TRAIN + N_NON + N_TEST
    x = torch.randn(n, D, generator=g)
    p = torch.sigmoid(x @ (torch.randn(D, generator=g) * 6 / D ** 0.5))
    y = (torch.rand(n, generator=g) < p).long()
    wrong = (p < 0.5).long()
    y[:N_FORGET], y[N_TRAIN:N_TRAIN + N_NON] = wrong[:N_FORGET], wrong[N_TRAIN:N_TRAIN + N_NON]
    cut = (0, N_FORGET, N_TRAIN, N_TRAIN + N_NON, n)
    return tuple((x[a:b], y[a:b]) for a, b in itertools.pairwise(cut))


def train(x, y, seed: int):
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = mlp.build(D, HIDDEN, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(x), generator=gen).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model, time.perf_counter() - t0


def measure(model, forget, nonmembers, test) -> dict:
    fs, ns = mia.example_stats(model, forget), mia.example_stats(model, nonmembers)
    return {"loss_auc": mia.loss_threshold_auc(fs.loss, ns.loss),
            "learned_auc": mia.learned_attack_auc(fs.features(), ns.features(), seed=0),
            "test_accuracy": mia.accuracy(model, test)}


def scenario(seed: int) -> dict:
    forget, retain, nonmembers, test = data(seed)
    original, orig_s = train(torch.cat([forget[0]] * REPEAT + [retain[0]]), torch.cat([forget[1]] * REPEAT + [retain[1]]),
                             seed + 1)
    retrained, retrain_s = train(*retain, seed + 1)
    sample = approximate.retain_sample(len(retain[0]), len(forget[0]), torch.Generator().manual_seed(seed))
    return {"forget": forget, "retain_sample": (retain[0][sample], retain[1][sample]), "nonmembers": nonmembers,
            "test": test, "original": original, "retrained_model": retrained, "retrain_s": retrain_s,
            "m_original": measure(original, forget, nonmembers, test),
            "m_retrained": measure(retrained, forget, nonmembers, test)}


def unlearn(sc: dict, method: str, params: dict, seed: int) -> dict:
    model = copy.deepcopy(sc["original"])
    t0 = time.perf_counter()
    METHODS[method](model, sc["forget"], sc["retain_sample"], generator=torch.Generator().manual_seed(seed), **params)
    wall = time.perf_counter() - t0
    return {**measure(model, sc["forget"], sc["nonmembers"], sc["test"]), "wall_s": wall}


def score(m: dict, sc: dict) -> float:
    """Lower is better: the larger attack's AUC gap to the retrained model, plus penalties for test accuracy more
    than one point below the retrained model's (the goal's reference) and for costing more than a tenth of the
    retrain."""
    gap = max(abs(m["loss_auc"] - sc["m_retrained"]["loss_auc"]), abs(m["learned_auc"] - sc["m_retrained"]["learned_auc"]))
    acc_pen = max(0.0, sc["m_retrained"]["test_accuracy"] - m["test_accuracy"] - 0.01)
    slow_pen = max(0.0, m["wall_s"] * 10 / sc["retrain_s"] - 1.0)
    return gap + 10 * acc_pen + slow_pen


def mean_se(values) -> dict:
    v = list(values)
    return {"mean": statistics.fmean(v), "se": statistics.stdev(v) / len(v) ** 0.5 if len(v) > 1 else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--tuning-seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; torch threads {torch.get_num_threads()}")

    tuning = [scenario(1000 + s) for s in range(args.tuning_seeds)]
    chosen, tuned = {}, {}
    for method, grid in GRIDS.items():
        scored = []
        for params in grid:
            s = statistics.fmean(score(unlearn(sc, method, params, 1000 + i), sc) for i, sc in enumerate(tuning))
            scored.append((s, params))
        scored.sort(key=lambda t: t[0])
        chosen[method] = scored[0][1]
        tuned[method] = [{"params": p, "score": s} for s, p in scored]
        print(f"{method}: tuned on seeds 1000..{999 + args.tuning_seeds}: {chosen[method]} (score {scored[0][0]:.3f})")

    rows: dict[str, list[dict]] = {"original": [], "retrained": [], **{m: [] for m in METHODS}}
    retrain_s = []
    for seed in range(args.seeds):
        sc = scenario(seed)
        rows["original"].append(sc["m_original"])
        rows["retrained"].append({**sc["m_retrained"], "wall_s": sc["retrain_s"]})
        retrain_s.append(sc["retrain_s"])
        for method in METHODS:
            rows[method].append(unlearn(sc, method, chosen[method], seed))

    summary = {}
    for name, rs in rows.items():
        summary[name] = {k: mean_se(r[k] for r in rs) for k in ("loss_auc", "learned_auc", "test_accuracy")}
        if name in METHODS:
            summary[name]["wall_s"] = mean_se(r["wall_s"] for r in rs)
            summary[name]["speedup"] = mean_se(rr["wall_s"] / r["wall_s"] for r, rr in zip(rs, rows["retrained"]))
            summary[name]["auc_gap_to_retrained"] = {
                k: mean_se(r[k] - rr[k] for r, rr in zip(rs, rows["retrained"])) for k in ("loss_auc", "learned_auc")}
            summary[name]["test_accuracy_drop_vs_retrained"] = mean_se(
                rr["test_accuracy"] - r["test_accuracy"] for r, rr in zip(rs, rows["retrained"]))
            gaps = summary[name]["auc_gap_to_retrained"]
            summary[name]["goal_met"] = {
                "auc_within_0.03": all(abs(g["mean"]) <= 0.03 for g in gaps.values()),
                "accuracy_within_1pt": summary[name]["test_accuracy_drop_vs_retrained"]["mean"] <= 0.01,
                "speedup_10x": summary[name]["speedup"]["mean"] >= 10}
    summary["retrained"]["wall_s"] = mean_se(retrain_s)

    def f(ms):
        return f"{ms['mean']:.3f}±{ms['se']:.3f}"

    print(f"\n{'model':14s} {'loss AUC':>14s} {'learned AUC':>14s} {'test acc':>14s} {'wall s':>14s} {'speedup':>10s}")
    for name, s in summary.items():
        wall = f(s["wall_s"]) if "wall_s" in s else ""
        sp = f"{s['speedup']['mean']:.0f}×" if "speedup" in s else ""
        print(f"{name:14s} {f(s['loss_auc']):>14s} {f(s['learned_auc']):>14s} {f(s['test_accuracy']):>14s} "
              f"{wall:>14s} {sp:>10s}")
    for m in METHODS:
        print(f"{m}: goal {summary[m]['goal_met']}; AUC gap to retrained "
              + ", ".join(f"{k} {f(v)}" for k, v in summary[m]["auc_gap_to_retrained"].items())
              + f"; test accuracy drop vs retrained {f(summary[m]['test_accuracy_drop_vs_retrained'])}")
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"code": code_version(), "loadavg": load, "loadavg_end": os.getloadavg(), "threads": torch.get_num_threads(),
           "seeds": list(range(args.seeds)), "tuning_seeds": [1000 + s for s in range(args.tuning_seeds)],
           "chosen": chosen, "tuning": tuned, "summary": summary, "per_seed": rows}
    (args.out / "verify.json").write_text(json.dumps(doc, indent=2, default=float))
    print(f"wrote {args.out / 'verify.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
