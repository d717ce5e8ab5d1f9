"""`expunge demo`: a small but complete lineage on synthetic customers, then one customer's impact."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from expunge import __version__, synth
from expunge.lineage.store import Store
from expunge.orchestrator.trainers import TrainRequest, logreg_certified, mlp, sisa
from expunge.orchestrator.trainers.derived import DISTILL, distill, finetune

N_CUSTOMERS = 400
SHARDS, SLICES = 4, 3


# The demo's keys are FIXED and PUBLIC (derived from these labels), so that two demo runs hash the same customers
# to the same shards and sign with the same approver: never use them, or a store built with them, for real data.
DEMO_SUBJECT_KEY_FILE = "demo-subject-key.NOT-SECRET.key"
DEMO_APPROVER_KEY_FILE = "approver.key"


def _demo_seed(label: str) -> bytes:
    import hashlib

    return hashlib.sha256(f"expunge demo key, public, for the demo only: {label}".encode()).digest()


def demo_subject_key(root: Path) -> Path:
    """The demo store's subject-hash key file (fixed; outside the store, under the demo dir)."""
    from expunge.lineage.keys import write_key_file

    path = root / DEMO_SUBJECT_KEY_FILE
    if not path.exists():
        write_key_file(path, [_demo_seed("subject hash")])
    return path


def _demo_approver_key(path: Path) -> str:
    """Write the demo approver's Ed25519 key (fixed seed; OpenSSH format, mode 0600); return its public line."""
    import os

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    key = Ed25519PrivateKey.from_private_bytes(_demo_seed("approver you@demo"))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()))
    return key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode() + " you@demo"


def demo_policy(store: Store, root: Path) -> Path:
    """The shipped policy with one approver, "you", whose (fixed, public) demo key is `root/approver.key`; it
    becomes the store's policy. Returns the key file."""
    from expunge.orchestrator.policy import default_policy_text, set_store_policy

    key = root / DEMO_APPROVER_KEY_FILE
    if not key.exists():
        pub = _demo_approver_key(key)
        (root / "policy.toml").write_text(default_policy_text() + "\n[approval.keys]\n"
                                          f'you = "{" ".join(pub.split()[:2])}"\n')
    set_store_policy(store, root / "policy.toml")
    return key


def build_demo(root: Path) -> tuple[Store, str]:
    """Build the demo store under `root`; return it and the customer to show."""
    import os

    # $EXPUNGE_SECRET, if set, is the user's choice of key; otherwise the demo's fixed one.
    env_key = os.environ.get("EXPUNGE_SECRET", "").strip()
    store = Store.init(root / "store", key_file=None if env_key else demo_subject_key(root))
    demo_policy(store, root)
    art = root / "artifacts"
    cust = synth.customers(N_CUSTOMERS, seed=1)
    tx1 = synth.transactions(3000, N_CUSTOMERS, seed=2)
    tx2_new = synth.transactions(1000, N_CUSTOMERS, seed=3, start=3000, day0=90)
    tx2 = pa.concat_tables([tx1.slice(200), tx2_new])  # 200 old transactions dropped, 1,000 new

    store.ingest_source(cust, name="customers", subject_col="customer_id", record_col="record_id")
    store.ingest_source(tx1, name="transactions", subject_col="customer_id", record_col="tx_id")
    store.ingest_source(tx2, name="transactions", subject_col="customer_id", record_col="tx_id")

    large = tx2.filter(pc.greater(tx2.column("amount"), 10.0))
    store.ingest_dataset(large.select(["tx_id"]), name="tx_large", parents=["transactions@2"], kind="filter",
                         record_col="tx_id")
    rng = np.random.default_rng(4)
    is_train = rng.random(large.num_rows) < 0.8
    store.ingest_dataset(large.filter(pa.array(is_train)).select(["tx_id"]), name="tx_train",
                         parents=["tx_large@1"], kind="split", record_col="tx_id")
    store.ingest_dataset(large.filter(pa.array(~is_train)).select(["tx_id"]), name="tx_test",
                         parents=["tx_large@1"], kind="split", record_col="tx_id")

    # One feature row per customer, built from their profile and all their transactions.
    tx_by_cust: dict[str, list[str]] = {}
    for c, t in zip(tx2.column("customer_id").to_pylist(), tx2.column("tx_id").to_pylist()):
        tx_by_cust.setdefault(c, []).append(t)
    prof = cust.column("record_id").to_pylist()
    owners = cust.column("customer_id").to_pylist()
    feats = pa.table({
        "row_id": [f"feat-{p}" for p in prof],
        "profile": prof,
        "txs": [tx_by_cust.get(c, []) for c in owners],
    })
    store.ingest_dataset(feats, name="customer_features", parents=["customers@1", "transactions@2"],
                         kind="aggregate", sources={"customers@1": "profile", "transactions@2": "txs"},
                         row_col="row_id")

    # Features the trainers read (the store keeps lineage, not feature values).
    feat_cols = [f"f{j}" for j in range(8)]
    cust_file, feat_file, tx_file = root / "customers.parquet", root / "customer_features.parquet", root / "tx.parquet"
    pq.write_table(cust, cust_file)
    pq.write_table(pa.table({"row_id": feats.column("row_id"), **{c: cust.column(c) for c in feat_cols},
                             "churned": cust.column("churned")}), feat_file)
    pq.write_table(tx2.select(["tx_id", "amount", "day", "fraud"]), tx_file)
    churn_cfg = {"row_col": "row_id", "feature_cols": feat_cols, "label_col": "churned", "epochs": 6,
                 "batch_size": 32, "lr": 0.1}

    def request(trainer, run, inputs, config, model, stage, family, seed=7, parents=()):
        return TrainRequest(store=store, run_name=run, inputs=inputs, config=config, seed=seed, out_dir=art / run,
                            trainer=trainer, model_name=model, stage=stage, parents=list(parents),
                            model_family=family, code_version=f"expunge {__version__}")

    # Churn model: SISA, sharded by keyed subject hash, newer customers in later slices.
    sisa.train(request(sisa.ENTRY_POINT, "churn-sisa-1", [{"dataset": "customer_features@1", "role": "train"}],
                       {**churn_cfg, "features": str(feat_file), "shards": SHARDS, "slices": SLICES},
                       "churn", "production", "sisa-mlp"))
    # A plain MLP on the profiles, fine-tuned on the newest customers, then distilled into a student
    # on the oldest ones (the student never sees the newest customers: affected only via its teacher).
    prof_cfg = {**churn_cfg, "features": str(cust_file), "row_col": "record_id"}
    mlp.train(request(mlp.ENTRY_POINT, "churn-mlp-1", [{"dataset": "customers@1", "role": "train"}], prof_cfg,
                      "churn-mlp", "staging", "mlp"))
    finetune(store, "churn-mlp@1", run_name="churn-finetune-1", dataset="customers@1", rows=prof[-100:],
             config={"epochs": 2, "lr": 0.02}, seed=8, out_dir=art / "churn-finetune-1", model_name="churn-ft",
             stage="staging")
    distill(request(DISTILL, "churn-distill-1", [{"dataset": "customers@1", "role": "train", "rows": prof[:50]}],
                    {**prof_cfg, "teacher": "churn-ft@1", "epochs": 3}, "churn-student", "dev", "mlp",
                    parents=[{"model": "churn-ft@1", "relation": "distill"}]))
    # Fraud model: an MLP with a checkpoint per epoch and each transaction's first-consumed step.
    mlp.train(request(mlp.ENTRY_POINT, "fraud-train-1",
                      [{"dataset": "tx_train@1", "role": "train"}, {"dataset": "tx_test@1", "role": "eval"}],
                      {"features": str(tx_file), "row_col": "tx_id", "feature_cols": ["amount", "day"],
                       "label_col": "fraud", "epochs": 3, "batch_size": 64, "lr": 0.001}, "fraud", "production",
                      "mlp", seed=11))
    # A certified-removal logistic regression on the profiles (ready for Newton-step removal).
    logreg_certified.train(request(logreg_certified.ENTRY_POINT, "churn-certified-1",
                                   [{"dataset": "customers@1", "role": "train"}], {**prof_cfg, "lam": 1e-3},
                                   "churn-certified", "staging", logreg_certified.FAMILY))

    # Show a customer among the newest (fine-tuned on), with the most transactions.
    candidates = owners[-100:]
    subject = max(candidates, key=lambda c: (len(tx_by_cust.get(c, [])), c))
    return store, subject


def demo_plans(store: Store, subject: str) -> list[dict]:
    """Two erasure requests of different categories, and their plans (saved in the store)."""
    from expunge.orchestrator import requests as rq
    from expunge.orchestrator.planner import make_plan, save_plan
    from expunge.orchestrator.policy import store_policy

    policy = store_policy(store)
    other = synth.customer_ids(N_CUSTOMERS)[7]
    plans = []
    for who, category, reason in ((subject, "default", "GDPR art. 17 erasure request"),
                                  (other, "marketing", "unsubscribed and asked to be forgotten")):
        req = rq.create(store, [who], category=category, reason=reason, policy=policy)
        doc = make_plan(store, [req.id], policy)
        save_plan(store, doc)
        plans.append(doc)
    return plans


def run_demo(directory: Path | None, json_out: bool = False) -> None:
    from rich.console import Console
    from rich.markup import escape

    from expunge.schemas import dumps

    root = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="expunge-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=json_out)
    with console.status("Building the demo lineage: ingesting datasets, training six models…"):
        store, subject = build_demo(root)
    result = store.impact([subject])
    if json_out:
        print(dumps(result.to_dict()))
        return
    from expunge.cli import _say, render_impact

    stats = store.stats()
    root_text = escape(str(store.root))  # a directory may be called a[/]
    _say(
        console,
        f"Built a demo lineage at [bold]{root_text}[/]: {stats['records']:,} records of {N_CUSTOMERS} synthetic "
        f"customers, {stats['dataset_versions']} dataset versions, {stats['runs']} runs, {stats['models']} models."
    )
    _say(console, f"\nCustomer [bold]{escape(subject)}[/] asks to be forgotten. What did their records touch?\n")
    render_impact(result, console)
    from expunge.cli import render_plan

    plans = demo_plans(store, subject)
    for doc, what in zip(plans, ("the default category (exact unlearning required)",
                                 "the marketing category (approximate unlearning allowed)")):
        _say(console, f"\nAn erasure request under {what}, planned:\n")
        render_plan(doc, console)
    ran = demo_run(store, plans, root, console)
    report = demo_evidence(store, ran, root, console)
    req1 = plans[0]["requests"][0]
    console.print(  # soft wrap: the commands must stay pasteable in a narrow terminal
        f"\nTry: expunge impact --store {store.root} --subject {subject} --json\n"
        f"     expunge plan list --store {store.root}\n"
        f"     expunge request show {req1} --store {store.root}\n"
        f"     expunge residuals {req1} --store {store.root}\n"
        f"     expunge run {ran[1]['plan'][:12]} --store {store.root} --json\n"
        f"     expunge verify {ran[0]['plan'][:12]} --store {store.root} --reproduce\n"
        f"     expunge audit log --request {req1} --store {store.root}\n"
        f"     expunge audit export {req1} --out {root / 'evidence'} --store {store.root}\n"
        f"     open {report}",
        soft_wrap=True, highlight=False, markup=False,
    )


def demo_evidence(store: Store, ran: list[dict], root: Path, console) -> Path:
    """The checks of both runs, the audit chain verified, and the governance report written. Returns its path."""
    from rich.markup import escape

    from expunge import audit, report
    from expunge.cli import _say
    from expunge.cli_verify import render_verify
    from expunge.orchestrator.verify import verify_plan

    for out in ran:
        console.print()
        render_verify(verify_plan(store, out["plan"]), console)
    chain = audit.verify(store)
    if chain["ok"]:
        _say(console, f"\nAudit log: the hash chain of {chain['events']} events is intact (head "
                      f"{chain['head']['hash'][:16]}…; `expunge audit anchor --out FILE` keeps it outside the store).")
    else:
        _say(console, f"\n[red]Audit log broken at event {chain['first_broken']['seq']}[/]")
    path = root / "report.html"
    with console.status("Writing the governance report…"):
        report.write_html(path, report.build(store))
    _say(console, f"Governance report: [bold]{escape(str(path))}[/]")
    return path



def demo_run(store: Store, plans: list[dict], root: Path, console) -> list[dict]:
    """Approve and run the first plan; the second, made before it ran, is stale: plan it again, approve and
    run it. Returns both runs' summaries."""
    from expunge.cli import _say, render_plan, render_run
    from expunge.orchestrator import planner
    from expunge.orchestrator.execute import run_plan
    from expunge.orchestrator.policy import store_policy

    key = root / "approver.key"
    out = []
    _say(console, f"\nApproving the first plan with the demo approver's key ({key.name}) and running it:\n")
    planner.approve(store, plans[0]["id"], key)
    with console.status("Unlearning: the first plan's actions…"):
        out.append(run_plan(store, plans[0]["id"]))
    render_run(out[-1], console)
    done = out[-1].get("completed")
    if done:
        _say(console, f"Proved by lineage: none of the {len(done['proof']['new_versions'])} new versions reaches the "
                      f"erased records; the store has forgotten the customer (a tombstone keeps their keyed hash).")
    stale = planner.stale_reason(store, plans[1], store_policy(store))
    _say(console, f"\nThe second plan was made before the first ran, so it is stale ({stale}). Planned again:\n")
    doc = planner.make_plan(store, plans[1]["requests"], store_policy(store))
    planner.save_plan(store, doc)
    render_plan(dict(doc, approvals=[]), console)
    planner.approve(store, doc["id"], key)
    with console.status("Unlearning: the second plan's actions…"):
        out.append(run_plan(store, doc["id"]))
    console.print()
    render_run(out[-1], console)
    if out[-1].get("completed") is None:
        _say(console, "Approximate results stay pending (not promoted) until they pass the policy's "
                      "membership-inference and accuracy check; the customer stays known until then.")
    return out
