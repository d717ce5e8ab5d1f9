"""Certified removal for the `logreg-certified` model family, computed by expunge's own code.

A run recorded with model family `logreg-certified` promises the reference trainer's model
(`trainers.logreg_certified`): L2-regularised logistic regression with objective perturbation
(Guo, Goldstein, Hannun, van der Maaten, ICML 2020), rows scaled into the unit ball with a bias
column, y ∈ {−1, +1}, the weights saved as `{"model": {"w": tensor}}`, and the config keys
features, row_col, feature_cols, label_col, lam, sigma, epsilon, delta. The planner prices a
removal here from those recorded facts and the data the config names; it never imports the
run's recorded trainer (a module the catalog names is code whoever wrote the catalog chose).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from expunge.errors import BadInput
from expunge.orchestrator.actions import CERTIFIED_FAMILY as FAMILY  # noqa: F401


def design(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """(X with rows scaled into the unit ball and a bias column, y in {−1, +1}) in float64. Built in one buffer
    (filled, then divided in place): each fresh n×d tensor costs a pass of page faults (200k × 33: ~35 ms)."""
    n, d = ds.x.shape
    x = torch.empty(n, d + 1, dtype=torch.float64)
    x[:, :d] = ds.x
    x[:, d] = 1.0
    x.div_(x.norm(dim=1, keepdim=True).clamp_min(1.0))
    return x, ds.y.double() * 2 - 1


def certificate(c: dict) -> dict:
    eps, delta, sigma = float(c.get("epsilon", 1.0)), float(c.get("delta", 1e-4)), float(c.get("sigma", 1.0))
    cst = math.sqrt(2 * math.log(1.5 / delta))
    return {"lam": float(c.get("lam", 1e-3)), "sigma": sigma, "epsilon": eps, "delta": delta, "c": cst,
            "removal_budget": sigma * eps / cst, "gamma": 0.25, "loss": "logistic", "x_norm": "unit-ball rows"}


def removal_facts(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lam: float) -> dict:
    """What a planner needs to bound the cost of later removals before it has the data at hand
    (`expunge.orchestrator.costs.certified_residual_bound`): λ_min of the objective's Hessian at w*,
    λ_max(XᵀX) and ‖w*‖. d×d eigenvalue problems: negligible next to training."""
    with torch.no_grad():
        p = torch.sigmoid(y * (x @ w))
        h = x.T @ ((p * (1 - p))[:, None] * x) + lam * len(y) * torch.eye(x.shape[1], dtype=x.dtype)
        return {"n": len(y), "hessian_min_eig": float(torch.linalg.eigvalsh(h)[0]),
                "x_spectral_sq": float(torch.linalg.eigvalsh(x.T @ x)[-1]), "w_norm": float(w.norm())}


def removal_state(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lam: float) -> dict:
    """What a later removal needs besides the removed rows, saved with the weights: the Hessian of the
    training objective at `w` (λn·I included), XᵀX and n. d×d each: with them one batch Newton step
    (`batch_removal`) and its certificate need only the removed rows, not the training data."""
    with torch.no_grad():
        h = _curvature(x, y, w, []) + lam * len(y) * torch.eye(x.shape[1], dtype=x.dtype)
        return {"hessian": h, "gram": x.T @ x, "n": torch.tensor(len(y), dtype=torch.int64)}


def batch_removal(state: dict, w: torch.Tensor, lam: float, xr: torch.Tensor, yr: torch.Tensor,
                  gamma: float = 0.25) -> tuple[torch.Tensor, float, dict]:
    """Remove the k rows (xr, yr) at once with one Newton step (Guo et al., batch removal), from the
    `removal_state` recorded at `w` and the removed rows alone.

    H' = H − Σ_r ℓ''(r) x_r x_rᵀ − λk·I (the kept objective's Hessian at w), Δ = Σ_r ∇ℓ(r) + λk·w,
    w⁻ = w + H'⁻¹Δ. Bound on the gradient residual it adds (their Corollary 1, which holds for any Δ):
    γ‖X'‖₂·‖H'⁻¹Δ‖·‖X'H'⁻¹Δ‖ with X'ᵀX' = XᵀX − X_rᵀX_r, so ‖X'‖₂² = λ_max(X'ᵀX') and
    ‖X'v‖² = vᵀX'ᵀX'v. Returns (w⁻, bound, the state of the kept rows: XᵀX and n; no Hessian, which
    would be needed at w⁻)."""
    k = len(yr)
    gram = state["gram"] - xr.T @ xr
    n = int(state["n"]) - k
    if k == 0:
        return w.clone(), 0.0, {"gram": gram, "n": torch.tensor(n, dtype=torch.int64)}
    eye = torch.eye(w.shape[0], dtype=w.dtype)
    p = torch.sigmoid(yr * (xr @ w))
    hess = state["hessian"] - xr.T @ ((p * (1 - p))[:, None] * xr) - lam * k * eye
    delta = (xr * ((p - 1) * yr)[:, None]).sum(0) + lam * k * w
    step = torch.linalg.solve(hess, delta)
    spec = float(torch.linalg.eigvalsh(gram)[-1].clamp_min(0).sqrt())
    bound = gamma * spec * float(step.norm()) * float((step @ gram @ step).clamp_min(0).sqrt())
    return w + step, bound, {"gram": gram, "n": torch.tensor(n, dtype=torch.int64)}


def design_arrays(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """`design` for plain feature and label arrays (float32 features, 0/1 labels, as RecordDataset holds)."""
    class _D:
        pass

    d = _D()
    d.x, d.y = torch.as_tensor(np.asarray(x, np.float32)), torch.as_tensor(np.asarray(y, np.int64))
    return design(d)


def newton_removal(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, lam: float, remove: list[int],
                   gamma: float = 0.25) -> tuple[torch.Tensor, list[float]]:
    """Remove rows `remove` of (x, y) one at a time, each with a Newton step (Guo et al., Alg. 1).

    Returns the new weights and, per step, the data-dependent bound on the gradient residual it adds
    (their Corollary 1: γ‖X'‖₂·‖H'⁻¹Δ‖·‖X'H'⁻¹Δ‖, X' the rows still kept, H' the Hessian of their
    objective at the current weights, Δ = ∇ℓ(removed row) + λw). The bounds add up against the budget.
    """
    keep = torch.ones(len(y), dtype=torch.bool)
    w = w.clone()
    k_mat = x.T @ x
    eye = torch.eye(x.shape[1], dtype=x.dtype)
    bounds = []
    for r in remove:
        keep[r] = False
        k_mat = k_mat - torch.outer(x[r], x[r])
        xk, yk = x[keep], y[keep]
        p = torch.sigmoid(yk * (xk @ w))
        hess = xk.T @ ((p * (1 - p))[:, None] * xk) + lam * len(yk) * eye
        pr = torch.sigmoid(y[r] * (x[r] @ w))
        delta = x[r] * ((pr - 1) * y[r]) + lam * w
        step = torch.linalg.solve(hess, delta)
        spec = float(torch.linalg.eigvalsh(k_mat)[-1].clamp_min(0).sqrt())
        bounds.append(gamma * spec * float(step.norm()) * float((xk @ step).norm()))
        w = w + step
    return w, bounds


def _curvature(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, drop: list[int], block: int = 2048) -> torch.Tensor:
    """Σ ℓ''(y·xᵀw)·x xᵀ over the rows of x but `drop`: every row's in blocks (each scaled block stays in cache,
    2× faster than one product at 200k rows), less the dropped rows' own (a few), so that no copy of the kept
    rows is made."""
    n, d = x.shape
    h = torch.zeros(d, d, dtype=x.dtype)
    for i in range(0, n, block):
        xb = x[i:i + block]
        p = torch.sigmoid(y[i:i + block] * (xb @ w))
        h.addmm_(xb.T, (p * (1 - p))[:, None] * xb)
    if drop:
        xd = x[drop]
        p = torch.sigmoid(y[drop] * (xd @ w))
        h -= xd.T @ ((p * (1 - p))[:, None] * xd)
    return h


def per_row_removal(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, lam: float, remove: list[int],
                    gram: torch.Tensor | None = None, gamma: float = 0.25,
                    state: bool = True) -> tuple[torch.Tensor, list[float], dict | None]:
    """`newton_removal` (the same steps and bounds) with less work, and, with `state`, the `removal_state` of the
    result. XᵀX is taken from `gram` when given (what the weights' file saved for these rows) instead of computed,
    and the kept rows' XᵀX after the steps is the new state's; each Hessian is every row's less the removed rows'
    (`_curvature`: no copy of the kept rows), and ‖X'v‖² = vᵀX'ᵀX'v. So k steps cost k Hessians and the new state
    one more (n·d² each), where `newton_removal` then `removal_state` cost k + 3 and k + 2 copies of the rows."""
    n, d = x.shape
    if gram is None:
        gram = x.T @ x
    w = w.clone()
    eye = torch.eye(d, dtype=x.dtype)
    bounds, gone = [], []
    for r in remove:
        gone.append(r)
        gram = gram - torch.outer(x[r], x[r])
        hess = _curvature(x, y, w, gone) + lam * (n - len(gone)) * eye
        pr = torch.sigmoid(y[r] * (x[r] @ w))
        delta = x[r] * ((pr - 1) * y[r]) + lam * w
        step = torch.linalg.solve(hess, delta)
        spec = float(torch.linalg.eigvalsh(gram)[-1].clamp_min(0).sqrt())
        bounds.append(gamma * spec * float(step.norm()) * float((step @ gram @ step).clamp_min(0).sqrt()))
        w = w + step
    if not state:
        return w, bounds, None
    with torch.no_grad():
        h = _curvature(x, y, w, gone) + lam * (n - len(gone)) * eye
    return w, bounds, {"hessian": h, "gram": gram, "n": torch.tensor(n - len(gone), dtype=torch.int64)}


def training_data(store, rec: dict, exclude_records=()):
    """The run's training rows (a `RecordDataset`) from its recorded inputs and the features file its
    config names, minus `exclude_records`: what the reference trainer read."""
    from expunge.lineage.torch import RecordDataset

    c = rec["config"]
    inp = next((i for i in rec["inputs"] if i.get("role", "train") == "train"), None)
    if inp is None:
        raise BadInput("the run has no train input")
    return RecordDataset(store, inp["dataset"], c["features"], row_col=c.get("row_col", "record_id"),
                         feature_cols=c["feature_cols"], label_col=c["label_col"], rows=inp.get("rows"),
                         records=inp.get("_subset_ords") if inp.get("rows") is None else None,
                         exclude_records=exclude_records)


def removed_rows(store, rec: dict, erased) -> dict | None:
    """The training rows built from `erased` records, read alone (not the training data): for a run with one
    train input over a version whose rows are records. Returns {"x", "y" (design form), "k", "base" (the
    train subset's record ordinals, or None for the whole version)}, or None when the rows cannot be found
    that way (a composed version, several train inputs, a features table that does not hold each row once)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyroaring import BitMap

    from expunge.lineage.rows import record_ids
    from expunge.lineage.tables import read_rows_by_id

    train = [i for i in rec["inputs"] if i.get("role", "train") == "train"]
    if len(train) != 1 or train[0].get("_row_space") != "records":
        return None
    c = rec["config"]
    base = train[0].get("_subset_ords")
    with store.view() as view:
        v = view.resolve_version(train[0]["dataset"])
        whole = BitMap(base) if base is not None else view.load_bitmap(v["bitmap_file"])
        hit = np.asarray(list(whole & BitMap(np.asarray(erased, np.uint32))), np.uint32)
        ids = record_ids(store, view, v["record_dataset_id"], hit) if hit.size else pa.array([], pa.string())
    cols = [c.get("row_col", "record_id"), *c["feature_cols"], c["label_col"]]
    rows = read_rows_by_id(c["features"], cols[0], cols, ids)  # the removed rows alone, found by their ids
    if rows.num_rows != len(ids) or pc.count_distinct(rows.column(0)).as_py() != len(ids):
        return None  # a removed row missing from the table, or there more than once
    x = np.column_stack([rows.column(f).to_numpy(zero_copy_only=False).astype(np.float32)
                         for f in c["feature_cols"]]).reshape(len(rows), len(c["feature_cols"]))
    y = rows.column(c["label_col"]).to_numpy(zero_copy_only=False).astype(np.int64)
    xd, yd = design_arrays(x, y)
    return {"x": xd, "y": yd, "k": int(hit.size), "base": base, "erased_train": hit}


ROWS_BLOCK = 2048  # rows per hashed block of a removal rows file (~270 KB at 32 features: ~0.2 ms to check)
ROWS_FILE = "removal-rows.npy"
_ALIGN = 8


def _sections(n: int, d: int) -> tuple[int, int, int]:
    """Byte offsets of a removal rows file's three sections (record ordinals u4, labels i1, features f4 row by row)
    in its payload, each on an 8-byte boundary, and the payload's length."""
    def up(k):
        return -(-k // _ALIGN) * _ALIGN

    y_at = up(4 * n)
    x_at = up(y_at + n)
    return y_at, x_at, x_at + 4 * n * d


def _views(raw: np.ndarray, n: int, d: int):
    """(ordinals, labels, features) of a removal rows file's payload (a uint8 array or memmap): views, no copy."""
    y_at, x_at, end = _sections(n, d)
    return raw[:4 * n].view("<u4"), raw[y_at:y_at + n].view("i1"), raw[x_at:end].view("<f4").reshape(n, d)


def _block_hash(ords, y, x, blk: int, b: int) -> str:
    h = hashlib.sha256()
    for part in (ords[blk * b:(blk + 1) * b], y[blk * b:(blk + 1) * b], x[blk * b:(blk + 1) * b]):
        h.update(memoryview(np.ascontiguousarray(part)).cast("B"))
    return h.hexdigest()


def save_removal_rows(out_dir, ords: np.ndarray, x: torch.Tensor, y: torch.Tensor) -> dict | None:
    """Write the training rows as the dataset held them (float32 features, 0/1 labels) keyed by record ordinal,
    so that a later removal reads the removed rows alone (`removal_rows`) or the training data whole
    (`training_rows`) without the features file; both put them in design form as the trainer did (`design`).

    One .npy file (uint8, no pickle) whose payload is three sections in record-ordinal order: the ordinals
    (uint32: a binary search touches a few pages), the labels (int8), the features (float32, a row's
    contiguous). Each block of ROWS_BLOCK rows is hashed (sha256 over its three parts), and the file whole
    (residual copies compare it). Returns what the run records ({file, sha256, rows, dim, block_rows, blocks,
    write_seconds, read_seconds: reading it whole}), or None when the rows are not
    one per record (an ordinal twice) or the labels are not 0/1."""
    import io
    import os
    import time
    from pathlib import Path

    from expunge.lineage.fsutil import create_private, fsync_dir

    t0 = time.perf_counter()
    ords = np.asarray(ords, np.int64)
    yv = np.asarray(y, np.int64)
    if len(ords) and (ords.min() < 0 or ords.max() > np.iinfo(np.uint32).max) or not np.isin(yv, (0, 1)).all():
        return None
    order = np.argsort(ords, kind="stable")
    sorted_ords = ords[order]
    if len(ords) > 1 and not (np.diff(sorted_ords) > 0).all():
        return None
    n, d = x.shape
    raw = np.zeros(_sections(n, d)[2], np.uint8)
    o, yy, xx = _views(raw, n, d)
    o[:] = sorted_ords
    xs = np.asarray(x, np.float32)
    if len(ords) > 1 and not (np.diff(ords) > 0).all():  # rows not in ordinal order already: gather them
        yv, xs = yv[order], xs[order]
    yy[:] = yv
    xx[:] = xs
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path = Path(out_dir) / ROWS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(raw))
    with os.fdopen(create_private(tmp), "wb") as fh:
        fh.write(head.getvalue())
        fh.write(memoryview(raw))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    whole = hashlib.sha256(head.getvalue())
    whole.update(memoryview(raw))
    blocks = [_block_hash(o, yy, xx, blk, ROWS_BLOCK) for blk in range(-(-n // ROWS_BLOCK))]
    meta = {"file": str(path), "sha256": whole.hexdigest(), "rows": int(n), "dim": int(d), "block_rows": ROWS_BLOCK,
            "blocks": blocks, "write_seconds": round(time.perf_counter() - t0, 6)}
    # What reading it whole costs (every block checked, the rows put in design form), for the planner.
    t1 = time.perf_counter()
    design_arrays(*load_rows_file(meta)[2:0:-1])
    meta["read_seconds"] = round(time.perf_counter() - t1, 6)
    return meta


class RowsFileUnusable(Exception):
    """The removal rows file is missing or not what training wrote (the reason is the message)."""


def _open_rows(meta: dict):
    """(ordinals, labels, features) of a removal rows file, memory-mapped; RowsFileUnusable if it cannot be."""
    try:
        raw = np.load(meta["file"], mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise RowsFileUnusable(f"cannot read it ({type(exc).__name__}: {exc})") from None
    n, d, b = int(meta["rows"]), int(meta["dim"]), int(meta["block_rows"])
    if raw.dtype != np.uint8 or raw.shape != (_sections(n, d)[2],) or len(meta["blocks"]) != -(-n // b):
        raise RowsFileUnusable(f"its size is not that of the {n} rows of {d} features training wrote")
    return _views(raw, n, d)


def _check_blocks(meta: dict, parts, blocks) -> None:
    n, b = int(meta["rows"]), int(meta["block_rows"])
    for blk in blocks:
        if _block_hash(*parts, blk, b) != meta["blocks"][blk]:
            raise RowsFileUnusable(f"block {blk} (rows {blk * b}-{min((blk + 1) * b, n) - 1}) is not what training "
                                   "wrote (sha256 differs)")


def removal_rows(meta: dict, erased) -> dict:
    """The removed rows read from a removal rows file (`save_removal_rows`): {"x", "y" (design form), "k",
    "erased_train" (their ordinals)}. Only the blocks holding them are read, each checked against its recorded
    sha256; raises RowsFileUnusable when the file is missing or differs from what training wrote."""
    ords, y, x = _open_rows(meta)
    want = np.unique(np.asarray(erased, np.int64))
    want = want[(want >= 0) & (want <= np.iinfo(np.uint32).max)].astype(np.uint32)
    pos = np.searchsorted(ords, want)
    inside = pos < len(ords)
    pos, want = pos[inside], want[inside]
    pos = pos[np.asarray(ords[pos]) == want]  # the records the run trained on (one row each)
    _check_blocks(meta, (ords, y, x), np.unique(pos // int(meta["block_rows"])).tolist())
    xd, yd = design_arrays(np.asarray(x[pos]), np.asarray(y[pos]))
    return {"x": xd, "y": yd, "k": int(len(pos)), "erased_train": np.asarray(ords[pos])}


def load_rows_file(meta: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A removal rows file read whole into memory, every block checked against its recorded sha256 (raises
    RowsFileUnusable when it is missing or is not what training wrote): (ordinals, labels, features)."""
    ords, y, x = (np.array(a) for a in _open_rows(meta))
    _check_blocks(meta, (ords, y, x), range(len(meta["blocks"])))
    return ords, y, x


def training_rows(store, rec: dict, erased, meta: dict) -> dict:
    """The run's training rows read from a removal rows file, every block checked, for Newton steps on the
    training data (a model whose weights carry no Hessian at themselves): {"x", "y" (design form), "remove"
    (positions of the rows of `erased` records, in the order of their record ids: the dataset's row order, in
    which the planner priced the steps), "seconds"}. The file may be an earlier run's of the same chain (it
    holds rows since removed): only the rows of the run's train records are kept. Raises RowsFileUnusable
    when the file is missing, changed, or lacks one of the run's rows."""
    import time

    from expunge.lineage.ingest import bitmap_array
    from expunge.lineage.rows import record_ids

    t0 = time.perf_counter()
    train = [i for i in rec["inputs"] if i.get("role", "train") == "train"]
    if len(train) != 1 or train[0].get("_row_space") != "records":
        raise RowsFileUnusable("the run's training rows are not one train input's records")
    ords, y, x = load_rows_file(meta)
    with store.view() as view:
        v = view.resolve_version(train[0]["dataset"])
        base = train[0].get("_subset_ords")
        kept = np.asarray(base, np.uint32) if base is not None else bitmap_array(view.load_bitmap(v["bitmap_file"]))
        inside = np.isin(ords, kept)
        if int(inside.sum()) != len(kept):
            raise RowsFileUnusable(f"it holds {int(inside.sum())} of the run's {len(kept)} training rows")
        ords, y, x = ords[inside], y[inside], x[inside]
        gone = np.flatnonzero(np.isin(ords, np.asarray(erased, np.int64)))
        ids = record_ids(store, view, v["record_dataset_id"], ords[gone]).to_pylist()
    remove = [int(gone[k]) for k in sorted(range(len(gone)), key=lambda k: ids[k])]
    xd, yd = design_arrays(x, y)
    return {"x": xd, "y": yd, "remove": remove, "seconds": time.perf_counter() - t0}


def find_removed_rows(store, rec: dict, erased, extra: dict) -> tuple[dict | None, str]:
    """The removed rows for a batch removal and where they came from: the run's removal rows file when it
    recorded one (the rows exactly as trained on), else (or when that file is missing or changed, which is
    said) the features table its config names (`removed_rows`)."""
    meta = extra.get("removal_rows")
    train = [i for i in rec["inputs"] if i.get("role", "train") == "train"]
    if meta and len(train) == 1 and train[0].get("_row_space") == "records":
        # The file may be an earlier run's of the chain: only the records this run trained on are removed.
        base = train[0].get("_subset_ords")
        want = np.asarray(erased, np.int64)
        if base is not None:  # the subset's ordinals, ascending (a bitmap's): look the few erased ones up
            base = np.asarray(base)
            at = np.searchsorted(base, want).clip(max=max(len(base) - 1, 0))
            want = want[(base[at] == want)] if len(base) else want[:0]
        try:
            return removal_rows(meta, want), "removal rows file"
        except RowsFileUnusable as exc:
            note = f"features file (the removal rows file {meta['file']}: {exc})"
    else:
        note = "features file"
    return removed_rows(store, rec, erased), note


def read_probe_seconds(store, version: str, config: dict, rows_meta: dict | None = None) -> float:
    """Seconds that finding removed rows takes on this data for one record: from the removal rows file
    (`removal_rows`) when the run wrote one, else from the features table (`removed_rows`: reading its ids,
    matching them, reading the record ids). Measured by the trainer, so that a batch removal can be priced
    before it runs: the second of two probes (a process's first scan of the features file sets up what a
    removal finds set up, and took two to three times as long on the 200k-row benchmark)."""
    import time

    from expunge.lineage.rows import record_ids
    from expunge.lineage.tables import read_rows_by_id

    seconds = 0.0
    for _ in range(2):
        t0 = time.perf_counter()
        if rows_meta:
            removal_rows(rows_meta, np.asarray(_open_rows(rows_meta)[0][:1], np.int64))
            seconds = time.perf_counter() - t0
            continue
        with store.view() as view:
            v = view.resolve_version(version)
            if v["row_space"] != "records":
                return 0.0
            bm = view.load_bitmap(v["bitmap_file"])
            first = bm.min() if len(bm) else 0
            ids = record_ids(store, view, v["record_dataset_id"], np.asarray([first], np.uint32))
        cols = [config.get("row_col", "record_id"), *config["feature_cols"], config["label_col"]]
        read_rows_by_id(config["features"], cols[0], cols, ids)
        seconds = time.perf_counter() - t0
    return seconds


def removal_need(store, run: str, model_path, exclude_records, max_work: float = 2e8,
                 sha256: str | None = None) -> float | None:
    """`removal_need_how`'s budget."""
    return removal_need_how(store, run, model_path, exclude_records, max_work, sha256)[0]


def removal_need_how(store, run: str, model_path, exclude_records, max_work: float = 2e8,
                     sha256: str | None = None, extra: dict | None = None) -> tuple[float | None, str | None]:
    """Budget that removing `exclude_records` from `run`'s model would use (the sum of `newton_removal`'s
    bounds), computed on the run's training data; None when that work (k steps of n·d²) exceeds `max_work`
    or the data is not at hand. The weights are checked against their recorded sha256 (`sha256`, else the
    one the store recorded for `model_path`) before they are loaded."""
    import json

    from expunge.lineage.torch import load_artifact
    from expunge.orchestrator.rerun import recorded_request

    rec = recorded_request(store, run, need_trainer=False, rows=False)
    state = load_artifact(model_path, sha256, store=store)
    saved = state.get("removal_state") or {}
    if extra is None:  # the run's recorded extra (the planner passes the one it has read)
        with store.read() as con:
            extra = json.loads(con.execute("SELECT extra FROM runs WHERE name = ?", [run]).fetchone()[0] or "{}")
    if "hessian" in saved:
        try:
            fast = find_removed_rows(store, rec, np.asarray(exclude_records, np.uint32), extra)[0]
        except (OSError, BadInput):
            return None, None
        if fast is not None:  # the executor's batch step, from the removed rows alone
            lam = certificate(rec["config"])["lam"]
            return batch_removal(saved, state["model"]["w"].double(), lam, fast["x"], fast["y"])[1], "batch"
    if max_work <= 0:
        return None, None
    got = None
    if extra.get("removal_rows"):  # the training rows as trained on, from the chain's removal rows file
        try:
            got = training_rows(store, rec, np.asarray(exclude_records, np.uint32), extra["removal_rows"])
            x, y, remove = got["x"], got["y"], got["remove"]
        except RowsFileUnusable:
            got = None
    if got is None:
        rec = recorded_request(store, run, need_trainer=False, train_ords="always")
        try:
            full = training_data(store, rec)
            kept = set(training_data(store, rec, np.asarray(exclude_records, np.uint32)).row_ids)
        except (OSError, BadInput):
            return None, None
        remove = [i for i, rid in enumerate(full.row_ids) if rid not in kept]
        x, y = design(full)
    if len(remove) * len(y) * x.shape[1] ** 2 > max_work:
        return None, None
    w = state["model"]["w"].double()
    return float(sum(per_row_removal(x, y, w, certificate(rec["config"])["lam"], remove, gram=saved_gram(saved, len(y)),
                                     state=False)[1])), "per-row"


def saved_gram(saved: dict, n: int) -> torch.Tensor | None:
    """XᵀX of the weights' rows as their file saved it (`removal_state`, `batch_removal`'s result), when it is of
    `n` rows; else None (computed from the rows)."""
    g = saved.get("gram")
    return g.double() if isinstance(g, torch.Tensor) and "n" in saved and int(saved["n"]) == n else None
