"""Write a :class:`~fedbench.reports.tables.Table` as Markdown, LaTeX or CSV."""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Callable
from pathlib import Path

from fedbench.config import check_writable
from fedbench.errors import ConfigError
from fedbench.reports.tables import MISSING, Table

FORMATS = ("md", "tex", "csv")


def folder_name(experiment: str) -> str:
    """``experiment`` as one safe file-name component, for the default output folder
    ``reports/out/<experiment>/``: an MLflow experiment name may hold ``/`` or ``..`` (``/abs/dir``,
    ``../../x``), which would otherwise put the report outside that folder. A name that had to
    change gets a short hash of the original, so two experiments never share a folder."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("._-")
    if safe == experiment and safe:
        return safe
    digest = hashlib.sha256(experiment.encode()).hexdigest()[:8]
    return f"{safe or 'experiment'}-{digest}"


def check_out_dir(folder: Path) -> Path:
    """Make the output folder of a report (``--out``) and fail with one line if files cannot be
    written there: a file where the folder belongs, a path under ``/proc``, no permission. Called
    before anything is written, so a bad ``--out`` is a :class:`ConfigError` (exit code 2), not
    an ``OSError`` from deep inside ``write_text`` or matplotlib, which reads as a bug."""
    if folder.expanduser().is_file():
        raise ConfigError(f"--out {folder} is a file; give --out a folder (it is made if missing)")
    check_writable(folder, "output folder", "give --out a folder you can write to")
    return folder


def write_out(path: Path, write: Callable[[Path], object]) -> Path:
    """``write(path)`` with an ``OSError`` (the file itself is read-only, a folder, the disk is
    full) turned into a one-line :class:`ConfigError` naming the file; returns ``path``."""
    try:
        write(path)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot write {path} ({reason}); give --out a folder you can write to") from exc
    return path


def to_markdown(table: Table) -> str:
    """A GitHub table; the best inclusive values in ``**bold**``, the note below it."""
    lines = [
        "| " + " | ".join(table.columns) + " |",
        "|" + "---|" * len(table.columns),
    ]
    for row in table.rows:
        lines.append("| " + " | ".join(f"**{c.text}**" if c.bold else c.text for c in row) + " |")
    text = "\n".join(lines) + "\n"
    return text + (f"\n{table.note}\n" if table.note else "")


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "α": r"$\alpha$", "Δ": r"$\Delta$", "×": r"$\times$", "—": "---",
                  MISSING: "--", "`": ""}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)
    for symbol, replacement in _LATEX_SYMBOLS.items():
        out = out.replace(symbol, replacement)
    return out


def to_latex(table: Table) -> str:
    """A booktabs ``table`` environment (needs ``\\usepackage{booktabs}``)."""
    spec = "ll" + "r" * (len(table.columns) - 2)
    body = []
    for row in table.rows:
        cells = [rf"\textbf{{{latex_escape(c.text)}}}" if c.bold else latex_escape(c.text) for c in row]
        body.append(" & ".join(cells) + r" \\")
    return "\n".join([
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(table.title)}. {latex_escape(table.note)}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(latex_escape(c) for c in table.columns) + r" \\",
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ]) + "\n"


def to_csv(table: Table) -> str:
    """Plain cells (no bold); a missing cell is empty, "NA" stays "NA"."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.columns)
    for row in table.rows:
        writer.writerow("" if c.text == MISSING else c.text for c in row)
    return buffer.getvalue()


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def render(table: Table, fmt: str) -> str:
    check_format(fmt)
    return {"md": to_markdown, "tex": to_latex, "csv": to_csv}[fmt](table)
