"""The email send path with the ledger's fence, against the same path before the fence.

Both variants run the real email activity (``EmailActivities.send_email`` under Temporal's
``ActivityEnvironment``: rendering, tracking links, the suppression check, the ledger claim,
SMTP and the record before the final dot) against one aiosmtpd server on a free loopback
port, with the ledger in a SQLite file of each variant's own:

- ``fenced``: this checkout, or with ``--fenced-rev REV`` that commit exported the same way
  (attempt tokens, the bounded commit on connections of its own, the body drained to the
  kernel before the commit);
- ``pre-fence``: the code of commit ``8a651fc``, the last one before the fence, exported with
  ``git archive`` into a temporary folder (its ``activities/`` and ``dee/``, migrations
  included): the same activity and ledger, claiming without a token and recording without
  the check.

Each measurement is a process of its own (``--child``) with the variant's folder first on
``sys.path`` (it reports which files it imported, and the parent checks); it warms up, then
sends ``--sends`` emails, ``--concurrency`` at a time, each to a new ledger key. It reports
wall seconds and the process's CPU seconds (the ledger's threads included, the SMTP server
not: it runs in the parent). Rounds alternate which variant goes first; medians are shown.

    .venv/bin/python benchmarks/send_path.py [--sends 400] [--rounds 3] [--concurrency 1]
        [--fenced-rev REV]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PRE_FENCE = "8a651fc"
VARIANTS = ("pre-fence", "fenced")
WARM_UP = 30


async def child(root: Path, database: str, smtp_url: str, sends: int, concurrency: int) -> None:
    """Send ``sends`` emails with the code under ``root`` and print a JSON report."""
    sys.path.insert(0, str(root))
    from temporalio.testing import ActivityEnvironment

    import activities.email
    import dee
    from activities.email import EmailActivities
    from dee.plans.content import EmailTemplate
    from dee.plans.model import SendEmailStep, Tracking
    from dee.runs.channels import SendEmailInput
    from dee.runs.ledger import SendLedger
    from dee.runs.model import Contact
    from dee.settings import Settings

    settings = Settings(
        database_url=database,
        smtp_url=smtp_url,
        from_address="sales@example.com",
        public_url="https://dee.example.com",
        secret_key="bench-secret",
    )
    step = SendEmailStep(
        id="intro-email",
        template_id="t",
        subject="Introducing {{ product }}",
        tracking=Tracking(opens=True, clicks=True),
    )
    template = EmailTemplate(
        html='<p>Hi {{ contact.firstName }}, meet {{ product }}: <a href="https://example.com">'
        "see it</a>.</p>"
    )

    def make_input(index: int) -> SendEmailInput:
        return SendEmailInput(
            run_id=f"bench:{index}",
            plan_id="bench",
            plan_version=1,
            step=step,
            visit=1,
            template=template,
            contact=Contact(id=f"c{index}", email=f"c{index}@example.com", firstName="Ana"),
            variables={"product": "DEE"},
            sender=None,
        )

    with SendLedger(database) as ledger:
        email = EmailActivities(settings, ledger)
        limit = asyncio.Semaphore(concurrency)

        async def send(index: int) -> None:
            async with limit:
                result = await ActivityEnvironment().run(email.send_email, make_input(index))
                assert result.status == "sent", result

        await asyncio.gather(*(send(-1 - index) for index in range(WARM_UP)))
        cpu, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(send(index) for index in range(sends)))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu,
                "imported": [dee.__file__, activities.email.__file__],
            }
        )
    )


def export(revision: str, into: Path) -> Path:
    """``activities/`` and ``dee/`` as they were at ``revision``, under ``into``."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision, "activities", "dee"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def measure(
    variant: str, root: Path, folder: Path, smtp_url: str, sends: int, concurrency: int, run: int
) -> dict[str, Any]:
    database = f"sqlite:///{folder / f'{variant}-{run}.db'}"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    command = [sys.executable, __file__, "--child", str(root), database, smtp_url]
    options = ["--sends", str(sends), "--concurrency", str(concurrency)]
    done = subprocess.run(
        [*command, *options], cwd=folder, env=env, check=True, capture_output=True, text=True
    )
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    # The variant's own code ran, not this checkout's (or the other way round).
    assert all(Path(path).is_relative_to(root) for path in report["imported"]), report
    return report


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sends", type=int, default=400, help="emails per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per variant")
    parser.add_argument("--concurrency", type=int, default=1, help="sends in flight")
    parser.add_argument("--fenced-rev", help="measure this commit as fenced, not the checkout")
    parser.add_argument("--child", nargs=3, metavar=("ROOT", "DATABASE", "SMTP_URL"))
    args = parser.parse_args()
    if args.child:
        root, database, smtp_url = args.child
        await child(Path(root), database, smtp_url, args.sends, args.concurrency)
        return

    sys.path.insert(0, str(ROOT))
    from tests.helpers.smtp import smtp_server

    # aiosmtpd logs every client's hang-up after QUIT as an error.
    logging.getLogger("mail.log").setLevel(logging.CRITICAL)

    with tempfile.TemporaryDirectory(prefix="dee-send-bench-") as temporary:
        folder = Path(temporary)
        fenced = ROOT if args.fenced_rev is None else export(args.fenced_rev, folder / "fenced")
        roots = {"pre-fence": export(PRE_FENCE, folder / "pre-fence"), "fenced": fenced}
        results: dict[str, list[dict[str, Any]]] = {variant: [] for variant in VARIANTS}
        async with smtp_server() as smtp:
            for run in range(args.rounds):
                order = VARIANTS if run % 2 == 0 else VARIANTS[::-1]
                for variant in order:
                    before = len(smtp.handler.messages)
                    report = await asyncio.to_thread(
                        measure,
                        variant,
                        roots[variant],
                        folder,
                        smtp.url,
                        args.sends,
                        args.concurrency,
                        run,
                    )
                    delivered = len(smtp.handler.messages) - before
                    assert delivered == args.sends + WARM_UP, (variant, delivered)
                    results[variant].append(report)
                    print(
                        f"round {run + 1} {variant:9}: {report['seconds']:.2f} s, "
                        f"{report['cpu_seconds']:.2f} CPU s",
                        flush=True,
                    )
    print(f"\n{args.sends} sends, {args.concurrency} in flight, medians of {args.rounds}:")
    print("| variant | sends/s | ms per send | CPU ms per send |")
    print("| --- | ---: | ---: | ---: |")
    medians = {}
    for variant in VARIANTS:
        seconds = statistics.median(report["seconds"] for report in results[variant])
        cpu = statistics.median(report["cpu_seconds"] for report in results[variant])
        medians[variant] = (seconds, cpu)
        print(
            f"| {variant} | {args.sends / seconds:.0f} | {1000 * seconds / args.sends:.2f} "
            f"| {1000 * cpu / args.sends:.2f} |"
        )
    (pre_seconds, pre_cpu), (seconds, cpu) = medians["pre-fence"], medians["fenced"]
    print(f"\nfenced / pre-fence: time {seconds / pre_seconds:.3f}x, CPU {cpu / pre_cpu:.3f}x")


if __name__ == "__main__":
    asyncio.run(main())
