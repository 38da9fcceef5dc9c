"""Open cxrspark's MLflow runs in the real MLflow UI in headless Chromium and check what a user sees.

    .venv/bin/python tools/mlflow_ui_check.py --store out/demo/mlflow/mlflow.db --out out/ui-check

For the newest finished run of each of cxrspark's experiments in the store (those it marked
``mlflow.experimentKind=custom_model_development``: training, evaluation, LOSO...; or the runs given with
``--run``) it starts ``mlflow server`` on 127.0.0.1 over
the store and checks, in Debian's Chromium driven by Playwright:

* the experiment opens as a model-training experiment (its runs table lists the run);
* every per-class table the run logged (``eval/*_per_class*.json``) is shown as a table holding every
  class row and, when the table fits on the UI's first page (20 rows), the ``macro avg`` row;
* every picture the run logged under ``eval/`` (confusion matrix, ROC, reliability, Grad-CAM, ...) is
  displayed (an ``<img>`` of the artifact with a real width).

A screenshot of each page goes to ``--out``; the exit status is 1 when a check fails. Needs
``apt-get install chromium`` and ``pip install playwright==1.65.2`` (Playwright drives the system
Chromium; nothing is downloaded).

The MLflow 3.17 UI keeps one global "GenAI / Model training" switch per browser (local storage, default
GenAI) and follows it rather than the experiment's ``mlflow.experimentKind`` tag; the links this script
opens, and the ones README gives, carry ``?workflowType=machine_learning``, which flips that switch.
The script also records what a fresh browser shows for the experiment without that parameter.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ML = "workflowType=machine_learning"


@dataclass
class Report:
    checks: list[dict] = field(default_factory=list)

    def add(self, what: str, ok: bool, detail: str = "", shot: str | None = None) -> None:
        self.checks.append({"check": what, "ok": bool(ok), "detail": detail, "screenshot": shot})
        print(f"[{'ok' if ok else 'FAIL'}] {what}" + (f": {detail}" if detail else ""), flush=True)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c["ok"] for c in self.checks)


def _free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, log: Path) -> tuple[str, subprocess.Popen]:
    """``mlflow server`` over the sqlite store ``db`` on a free loopback port."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(mlflow), "server", "--backend-store-uri", f"sqlite:///{db.resolve()}",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {log.read_text()[-2000:]}")
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:  # noqa: S310 (loopback)
                return url, proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError(f"mlflow server not up after 120 s: {log.read_text()[-2000:]}")


def runs_to_check(uri: str, run_ids: list[str]) -> list[tuple[str, str, str]]:
    """(experiment id, run id, run name) of the given runs, else of the newest finished run of each of
    cxrspark's experiments (those it marked as model-training experiments) that has one."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    if run_ids:
        return [(r.info.experiment_id, r.info.run_id, r.info.run_name) for r in map(client.get_run, run_ids)]
    out = []
    for exp in client.search_experiments():
        if exp.tags.get("mlflow.experimentKind") != "custom_model_development":
            continue  # not one of cxrspark's experiments
        runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        out += [(exp.experiment_id, r.info.run_id, r.info.run_name) for r in runs]
    return out


#: rows a page of the MLflow 3.17 UI's table view of a logged table
PAGE_ROWS = 20


def table_rows(uri: str, run_id: str, path: str, tmp: Path) -> int:
    """Rows of a table logged with ``mlflow.log_table`` (its JSON artifact)."""
    from mlflow.tracking import MlflowClient

    local = MlflowClient(uri).download_artifacts(run_id, path, str(tmp))
    return len(json.loads(Path(local).read_text())["data"])


def artifacts(uri: str, run_id: str, folder: str = "eval") -> list[str]:
    from mlflow.tracking import MlflowClient

    return sorted(a.path for a in MlflowClient(uri).list_artifacts(run_id, folder) if not a.is_dir)


def check_store(db: Path, out: Path, run_ids: list[str] | None = None, chromium: str = "/usr/bin/chromium",
                classes: tuple[str, ...] = ("COVID-19", "Normal", "Pneumonia"), settle_ms: int = 4000) -> Report:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{db.resolve()}"
    report = Report()
    targets = runs_to_check(uri, run_ids or [])
    if not targets:
        report.add("a finished cxrspark run in the store", False, str(db))
        return report
    url, server = start_server(db, out / "mlflow-server.log")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)

            def page_at(link: str, shot: str, wait_text: str | None = None):
                page = browser.new_page(viewport={"width": 1400, "height": 1000})  # a fresh local storage each time
                page.goto(link)
                if wait_text:
                    try:
                        page.get_by_text(wait_text, exact=True).first.wait_for(timeout=30_000)
                    except Exception:  # noqa: BLE001 (reported as a failed check below)
                        pass
                page.wait_for_timeout(settle_ms)
                page.screenshot(path=str(out / shot), full_page=True)
                return page

            for exp_id, run_id, run_name in targets:
                tag = f"{exp_id}-{run_id[:8]}"
                page = page_at(f"{url}/#/experiments/{exp_id}", f"{tag}-experiment-default.png")
                report.add(f"experiment {exp_id}, fresh browser, no parameter (informative)", True,
                           "opens " + ("the runs table" if "/runs" in page.url else f"{page.url.split('#')[-1]}"),
                           f"{tag}-experiment-default.png")
                page.close()
                page = page_at(f"{url}/#/experiments/{exp_id}?{ML}", f"{tag}-experiment.png", run_name)
                body = page.inner_text("body")
                report.add(f"experiment {exp_id} opens as model training and lists run {run_name!r}",
                           "/runs" in page.url and run_name in body, page.url.split("#")[-1][:80], f"{tag}-experiment.png")
                page.close()
                files = artifacts(uri, run_id)
                tables = [f for f in files if f.endswith(".json") and "_per_class" in f]
                pictures = [f for f in files if f.endswith(".png")]
                report.add(f"run {run_id[:8]} has per-class tables and pictures", bool(tables and pictures),
                           f"{len(tables)} tables, {len(pictures)} pictures")
                for i, path in enumerate(tables):
                    shot = f"{tag}-table-{i}.png"
                    rows = table_rows(uri, run_id, path, out)
                    # the UI shows PAGE_ROWS rows a page: a longer table's later rows are on later pages
                    wanted = [*classes, "macro avg"] if rows <= PAGE_ROWS else list(classes)
                    page = page_at(f"{url}/#/experiments/{exp_id}/runs/{run_id}/artifacts/{path}?{ML}", shot, classes[0])
                    cells = {t.strip() for t in page.locator("[role=cell], td").all_inner_texts()}
                    missing = [c for c in wanted if c not in cells]
                    report.add(f"{path} shown as a table with every class", not missing,
                               f"missing {missing}" if missing else
                               f"{len(cells)} distinct cells on the first page of a {rows}-row table", shot)
                    page.close()
                for i, path in enumerate(pictures):
                    shot = f"{tag}-picture-{i}.png"
                    page = page_at(f"{url}/#/experiments/{exp_id}/runs/{run_id}/artifacts/{path}?{ML}", shot)
                    widths = page.eval_on_selector_all(f'img[alt="{path}"]', "els => els.map(e => e.naturalWidth)")
                    report.add(f"{path} displayed", bool(widths) and max(widths) > 0, f"natural width {widths}", shot)
                    page.close()
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    (out / "report.json").write_text(json.dumps(report.checks, indent=1))
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="the sqlite MLflow database (mlflow.db) or its sqlite:/// URI")
    ap.add_argument("--out", default="out/ui-check", help="screenshots and report.json go here")
    ap.add_argument("--run", action="append", default=[], help="check this run id (repeatable); default: the "
                                                               "newest finished run of each cxrspark experiment")
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    args = ap.parse_args(argv)
    db = Path(args.store.removeprefix("sqlite:///"))
    if not db.is_file():
        ap.error(f"no sqlite store at {db}")
    report = check_store(db, Path(args.out), args.run, args.chromium)
    print(f"{sum(c['ok'] for c in report.checks)}/{len(report.checks)} checks passed; screenshots in {args.out}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
