"""The statements step of a nightly run: each billed client's statement for the billing date and
for the month to date, written under the data directory after posting.

    <statements dir>/client-<id>/<YYYY-MM-DD>.<fmt>           the billing date
    <statements dir>/client-<id>/<YYYY-MM>-to-date.<fmt>      the calendar month up to the billing date

(default dir `<data_dir>/statements/out`, formats `statements.formats`). The client's name comes
from WHMCS (GetClientsDetails); a client WHMCS cannot name gets "Client #<id>" and a warning, never
a missing statement. A failure here never un-bills anything: the next run rebuilds whatever is
missing (autobill/statement/store.py `ensure_calls`).

With `statements.upload` every file written is also copied to `s3://bucket/prefix/client-<id>/…`
(or `file:///share/…`, connectors/object_store.py). The local copy always stays; a file that cannot
be uploaded is listed in `<statements dir>/.upload-pending`, sent by the next run, and this task
ends Failed with the count and the first reason (the billing stands).
"""

from __future__ import annotations

import multiprocessing
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State
from sqlalchemy import select

from autobill.config import Settings
from autobill.ledger.db import session_scope
from autobill.ledger.models import Charge
from autobill.statement import pdf, render
from autobill.statement.build import build_statements
from autobill.statement.store import materialize_run
from connectors.whmcs import WhmcsClient, WhmcsError


@dataclass
class StatementsReport:
    clients: int = 0
    files: int = 0
    calls: int = 0
    not_tied_out: list[str] = field(default_factory=list)  # "client 12 ST-XXXX": should never happen
    unnamed: list[int] = field(default_factory=list)
    unshown: dict[int, str] = field(default_factory=dict)  # client -> characters no PDF font has (shown <U+…>)
    upload_url: str | None = None
    uploaded: int = 0
    # (path under the statements directory, reason): kept locally, tried again by the next run
    upload_failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """What the run must show as needing attention (the statements themselves are written)."""
        out = []
        if self.upload_failed:
            out.append(f"{len(self.upload_failed)} statement file(s) not uploaded to {self.upload_url} (kept "
                       f"locally, tried again next run): {self.upload_failed[0][0]}: {self.upload_failed[0][1]}")
        if self.not_tied_out:
            out.append(f"charge lines whose calls do not add up to the ledger amount: {self.not_tied_out[:20]}")
        return out


class StatementsError(RuntimeError):
    """The statements cannot be written as configured (one line naming the setting)."""


def out_dir(settings: Settings) -> Path:
    configured = settings.statements.dir
    return settings.resolve_path(configured) if configured else settings.data_path / "statements" / "out"


def statement_paths(settings: Settings, client_id: int, first: date, last: date, fmt: str) -> Path:
    folder = out_dir(settings) / f"client-{client_id}"
    if first == last:
        return folder / f"{last.isoformat()}.{fmt}"
    if first == last.replace(day=1):
        return folder / f"{last:%Y-%m}-to-date.{fmt}"
    return folder / f"{first.isoformat()}_{last.isoformat()}.{fmt}"


def client_name(details: dict) -> str:
    c = details.get("client") or {}
    person = f"{c.get('firstname') or ''} {c.get('lastname') or ''}".strip()
    company = (c.get("companyname") or "").strip()
    return f"{company} ({person})" if company and person else company or person


def client_names(settings: Settings, client_ids: list[int], workers: int = 4) -> dict[int, str]:
    """Names from WHMCS GetClientsDetails; a client that cannot be read is left out (not fatal)."""
    if settings.whmcs is None or not client_ids:
        return {}
    clients: list[WhmcsClient] = []

    def one(cid: int) -> tuple[int, str]:
        if not hasattr(_local, "client"):
            _local.client = WhmcsClient.from_settings(settings.whmcs)
            clients.append(_local.client)
        try:
            return cid, client_name(_local.client.get_clients_details(cid))
        except WhmcsError:
            return cid, ""

    _local = threading.local()
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return {cid: name for cid, name in pool.map(one, client_ids) if name}
    finally:
        for c in clients:
            c.close()


def billed_clients(settings: Settings, day: date) -> list[int]:
    """Clients with a charge line dated `day`."""
    with session_scope(settings.ledger) as session:
        return sorted(session.scalars(select(Charge.client_id).where(Charge.billing_date == day).distinct()))


def fonts(settings: Settings) -> tuple[str, ...]:
    """`statements.fonts`, resolved against the config file's folder; a missing file is an error."""
    out = []
    for f in settings.statements.fonts:
        path = settings.resolve_path(f)
        if not path.is_file():
            raise StatementsError(f"statements.fonts: {path}: no such font file")
        out.append(str(path))
    return tuple(out)


CHUNK = 250  # clients read and shaped at a time: ~0.25 M calls late in a month of 10 M (peak RSS ~0.8 GB)
PENDING = ".upload-pending"  # under the statements directory: files a failed upload left to send


def upload_statements(settings: Settings, written: list[Path], report: StatementsReport) -> None:
    """Copy the files written (and those an earlier failed upload left) to `statements.upload.url`.
    The local files stay whatever happens; what fails is listed in the report and in `.upload-pending`."""
    from connectors.object_store import ObjectStoreError, open_store, upload

    cfg = settings.statements.upload
    if cfg is None:
        return
    out = out_dir(settings)
    pending = out / PENDING
    earlier = pending.read_text().splitlines() if pending.exists() else []
    todo = list(dict.fromkeys([p.relative_to(out).as_posix() for p in written]
                              + [r for r in earlier if r and (out / r).is_file()]))
    report.upload_url = cfg.url
    try:
        store = open_store(cfg)
    except ObjectStoreError as exc:
        report.upload_failed = [(r, str(exc)) for r in todo]
    else:
        try:
            result = upload(store, [(out / r, r) for r in todo], cfg.workers)
        finally:
            store.close()
        report.uploaded, report.upload_failed = len(result.uploaded), result.failed
    if report.upload_failed:
        out.mkdir(parents=True, exist_ok=True)
        tmp = pending.with_name(PENDING + ".tmp")
        tmp.write_text("".join(f"{r}\n" for r, _ in report.upload_failed))
        tmp.replace(pending)
    else:
        pending.unlink(missing_ok=True)


def write_statements(settings: Settings, day: date, run_id: int | None = None, names: dict[int, str] | None = None,
                     clients: list[int] | None = None, workers: int | None = None,
                     log: Callable[[str], None] = lambda _m: None, only_month: bool = False) -> StatementsReport:
    """Statements for the billing date and the month to date of every client billed that day
    (`only_month`: the month to date alone, as the benchmark measures), then the upload if configured.

    How it stays fast on a month of 10 M calls: the calls are read and shaped a thousand clients at
    a time (polars, vectorised: local times, the PDF's text rows, the per-line sums); CSV and HTML are
    written here; each PDF goes to a pool of `workers` spawned processes as plain text (`PdfDoc`),
    at most a few per worker in flight so memory stays bounded."""
    if run_id is not None:
        materialize_run(settings, run_id)
    report = StatementsReport()
    ids = billed_clients(settings, day) if clients is None else clients
    report.clients = len(ids)
    if not ids:
        upload_statements(settings, [], report)  # what an earlier run could not upload
        return report
    if names is None:
        names = client_names(settings, ids)
    report.unnamed = [cid for cid in ids if not names.get(cid)]
    formats = list(settings.statements.formats)
    extra_fonts = fonts(settings) if "pdf" in formats else ()
    workers = workers or settings.statements.workers
    columns = {**({render.PDF_ROW: render.pdf_row_expr()} if "pdf" in formats else {}),
               **({render.CSV_ROW: render.csv_row_expr()} if "csv" in formats else {})}
    written: list[Path] = []
    # spawn, not fork: forking a process that runs polars' (and Prefect's) threads can deadlock the child
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) \
        if workers > 1 and "pdf" in formats else None
    inflight: deque[tuple[int, Future]] = deque()

    def settle(cid: int, missing: list[str]) -> None:
        if missing:
            report.unshown[cid] = "".join(missing)

    try:
        for first in sorted({day.replace(day=1)} if only_month else {day, day.replace(day=1)}):
            for st in build_statements(settings, first, day, ids, names, chunk=CHUNK, columns=columns):
                report.calls += st.calls.height
                report.not_tied_out += [f"client {st.client_id} {ln.ref}" for ln in st.lines if not ln.tied_out]
                for fmt in formats:
                    path = statement_paths(settings, st.client_id, first, day, fmt)
                    if fmt != "pdf":
                        render.write(st, fmt, path)
                    elif pool is None:
                        settle(st.client_id, pdf.write_pdf(render.pdf_doc(st, path, extra_fonts)))
                    else:
                        inflight.append((st.client_id, pool.submit(pdf.write_pdf, render.pdf_doc(st, path, extra_fonts))))
                        while len(inflight) > 4 * workers:
                            cid, fut = inflight.popleft()
                            settle(cid, fut.result())
                    written.append(path)
            log(f"statements {first}..{day}: {len(ids)} client(s)")
        while inflight:
            cid, fut = inflight.popleft()
            settle(cid, fut.result())
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    report.files = len(written)
    upload_statements(settings, written, report)
    return report


def _markdown(settings: Settings, day: date, report: StatementsReport) -> str:
    rows = [f"# Statements for {day}", "",
            f"{report.files} file(s) for {report.clients} client(s), {report.calls} call(s), under "
            f"`{out_dir(settings)}`.", ""]
    if report.upload_url:
        rows.append(f"Uploaded to `{report.upload_url}`: {report.uploaded} file(s); "
                    f"**{len(report.upload_failed)} not uploaded** (kept locally, tried again next run)."
                    if report.upload_failed else f"Uploaded to `{report.upload_url}`: {report.uploaded} file(s).")
        rows.append("")
    problems = report.problems
    if report.unshown:
        problems.append(f"{len(report.unshown)} client(s) have characters no PDF font shows (printed as <U+…>; "
                        "add a font to statements.fonts): " + ", ".join(
                            f"client {c}: {chars}" for c, chars in list(report.unshown.items())[:10]))
    if problems:
        rows += ["## Needs attention", ""] + [f"- {p}" for p in problems]
        rows += [f"  - `{r}`: {why}" for r, why in report.upload_failed[:10]]
    return "\n".join(rows)


UPLOAD_FAILED = "UploadFailed"  # the name of the Failed state this task ends in when only the upload failed


def _retry_unless_upload_failed(task, task_run, state: State) -> bool:
    """A failed upload is not retried by writing every statement again: the next run sends the files."""
    return state.name != UPLOAD_FAILED


@task(name="statements", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10,
      retry_condition_fn=_retry_unless_upload_failed)
def statements_task(settings: Settings, day: date, run_id: int | None) -> StatementsReport | State:
    """The nightly's statements. The billing stands whatever happens here: a failure is this task's
    (red in the UI, with the reason), never the run's; an upload that fails leaves the files local,
    ends this task Failed with the count and the first reason, and the next run sends them."""
    logger = get_run_logger()
    report = write_statements(settings, day, run_id, log=logger.info)
    logger.info("wrote %s statement file(s) for %s client(s) (%s calls) under %s", report.files, report.clients,
                report.calls, out_dir(settings))
    if report.upload_url:
        logger.info("uploaded %s file(s) to %s", report.uploaded, report.upload_url)
    if report.unnamed:
        logger.warning("WHMCS could not name %s client(s) (shown as 'Client #id'): %s", len(report.unnamed),
                       report.unnamed[:20])
    if report.unshown:
        logger.warning("characters no PDF font has (printed as <U+...>; add a font to statements.fonts): %s",
                       {c: chars for c, chars in list(report.unshown.items())[:20]})
    for problem in report.problems:
        logger.error(problem)
    create_markdown_artifact(key="autobill-statements", markdown=_markdown(settings, day, report),
                             description=f"Statements for {day}")
    if report.upload_failed:
        return Failed(name=UPLOAD_FAILED, message=report.problems[0], data=report)
    return report
