"""One markdown table from `mnist-diffusion evaluate --json` reports: the rows of a comparison in
docs/RESULTS.md or docs/decisions/, read from the JSON files next to it rather than typed by hand.

    PYTHONPATH=src python scripts/report_table.py docs/results/label-free/*.json \
        --output docs/results/label-free/table.md

Each row: the file's name, the sampler (steps, eta, guidance, labels, autoguidance model), the
model's training step, FID and its floor, precision / recall, recognizability, class balance and,
where there is one, label accuracy. Reports are sorted by file name.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mnist_diffusion.atomic import atomic_write_text

COLUMNS = ["report", "sampler", "step", "n", "FID", "floor", "precision / recall", "recognizable",
           "class entropy", "label accuracy"]


def row(path: Path, report: dict) -> list[str]:
    s = report.get("sampler") or {}
    how = f"{s.get('sampler')} {s.get('steps')}"
    if s.get("spacing"):
        how += f" {s['spacing']}"
    if s.get("eta"):
        how += f", eta {s['eta']:g}"
    if s.get("guidance") is not None:
        how += f", W {s['guidance']:g}"
    if s.get("autoguide"):
        how += f", autoguide step {s.get('autoguide_step')}"
    elif s.get("labels"):
        how += f", {s['labels'].split(' (')[0]}"

    def num(key, fmt=".3f"):
        return format(report[key], fmt) if isinstance(report.get(key), (int, float)) else "-"
    return [path.stem, how, str(report.get("step", "-")), f"{report.get('n', '-'):,}", num("fid"), num("fid_floor"),
            f"{num('precision')} / {num('recall')}", num("recognizable"), num("class_entropy"),
            num("label_accuracy")]


def table(paths: list[Path]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|---|---|" + "---:|" * (len(COLUMNS) - 3)]
    for p in sorted(paths, key=lambda q: q.name):
        try:
            report = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise SystemExit(f"report_table.py: {p}: not a readable JSON report ({e})")
        if not isinstance(report, dict) or "fid" not in report:
            raise SystemExit(f"report_table.py: {p}: not the report of `mnist-diffusion evaluate --json`")
        lines.append("| " + " | ".join(row(p, report)) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="+", type=Path, help="evaluate --json files")
    ap.add_argument("--output", type=Path, help="also write the table here (markdown)")
    args = ap.parse_args(argv)
    if args.output is not None and args.output.is_dir():
        raise SystemExit(f"report_table.py: --output {args.output} is a folder")
    if args.output is not None and any(args.output.resolve() == r.resolve() for r in args.reports):
        raise SystemExit(f"report_table.py: --output {args.output} is one of the reports it reads")
    text = table(args.reports)
    sys.stdout.write(text)
    if args.output is not None:
        atomic_write_text(args.output, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
