"""Markdown and booktabs LaTeX rendering of aggregated tables, best value per column in bold.

Hand-written rather than pandas' `to_markdown`/`Styler.to_latex` because those need tabulate and
jinja2, and because cells are `mean ± std` strings with per-column bolding and escaping that
both formats must share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from tta_bench.report.collect import Cell

Best = Literal["min", "max"]
DIVERGED_MARK = "†"
DIVERGED_NOTE = f"{DIVERGED_MARK} diverged: non-finite outputs or gradients in at least one seed."
# Baselines first, then the order papers use; other methods follow alphabetically.
METHOD_ORDER = ("source", "norm", "bn_alpha", "tent", "eta", "eata", "sar", "deyo", "cotta", "rotta",
                "rmt", "rmt_source_free", "lame", "roid", "rdumb")


@dataclass
class Table:
    """Rows of cells under columns, with a title, the direction of 'best', and extra text columns."""

    title: str
    columns: list[str]
    rows: dict[str, dict[str, Cell]]
    best: Best | dict[str, Best] = "min"  # one direction, or one per column
    digits: int = 1
    extra: dict[str, dict[str, str]] = field(default_factory=dict)  # column -> row label -> text
    headers: dict[str, str] = field(default_factory=dict)  # display names of columns
    notes: list[str] = field(default_factory=list)


def ordered_labels(labels: list[str]) -> list[str]:
    """Row labels in METHOD_ORDER (by the method part of the label), others alphabetically after."""
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(labels, key=lambda label: (rank.get(label.split(" ")[0], len(rank)), label))


def _best_rows(table: Table, column: str) -> set[str]:
    """Labels holding the best mean in `column` (ties all bold)."""
    # Compared as displayed, so equal-looking values are bold together.
    values = {label: round(cells[column].mean, table.digits) for label, cells in table.rows.items()
              if column in cells and not math.isnan(cells[column].mean)}
    if len(values) < 2:
        return set()
    direction = table.best if isinstance(table.best, str) else table.best.get(column, "min")
    target = (min if direction == "min" else max)(values.values())
    return {label for label, v in values.items() if v == target}


def _format(cell: Cell | None, digits: int, pm: str) -> str:
    """`mean ± std` over several seeds, `mean` for one, `—` when missing."""
    if cell is None or math.isnan(cell.mean):
        return "—"
    text = f"{cell.mean:.{digits}f}"
    text = f"{text} {pm} {cell.std:.{digits}f}" if cell.n > 1 else text
    return text + DIVERGED_MARK if cell.diverged else text


def _grid(table: Table, pm: str, bold) -> tuple[list[str], list[list[str]]]:
    """Header and body strings shared by both formats."""
    seeds = {label: max((c.n for c in cells.values()), default=0) for label, cells in table.rows.items()}
    header = ["method", "seeds"] + [table.headers.get(c, c) for c in table.columns] + list(table.extra)
    best = {c: _best_rows(table, c) for c in table.columns}
    body = []
    for label in ordered_labels(list(table.rows)):
        cells = [_format(table.rows[label].get(c), table.digits, pm) for c in table.columns]
        cells = [bold(text) if label in best[c] else text for c, text in zip(table.columns, cells)]
        body.append([label, str(seeds[label])] + cells + [table.extra[c].get(label, "") for c in table.extra])
    return header, body


def _notes(table: Table) -> list[str]:
    """The table's notes, plus the divergence note when a cell is marked."""
    marked = any(cell.diverged for cells in table.rows.values() for cell in cells.values())
    return table.notes + ([DIVERGED_NOTE] if marked else [])


def to_markdown(table: Table) -> str:
    """GitHub-flavoured Markdown: a heading, the table, then the notes."""
    header, body = _grid(table, "±", lambda s: f"**{s}**")
    lines = [f"### {table.title}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines + [""] + [f"{note}  " for note in _notes(table)]).rstrip() + "\n"


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters of plain text."""
    return "".join(_LATEX.get(char, char) for char in text)


def to_latex(table: Table) -> str:
    """A booktabs `table` environment (needs \\usepackage{booktabs})."""
    header, body = _grid(table, "$\\pm$", lambda s: f"\\textbf{{{s}}}")
    escape = lambda s: (s if "\\textbf" in s or "$\\pm$" in s else latex_escape(s)).replace(  # noqa: E731
        DIVERGED_MARK, "$^\\dagger$")
    spec = "l" + "r" * (len(header) - 1)
    lines = ["\\begin{table}[t]", "\\centering", "\\small", f"\\caption{{{latex_escape(table.title)}}}",
             f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
             " & ".join(latex_escape(h) for h in header) + " \\\\", "\\midrule"]
    lines += [" & ".join(escape(c) for c in row) + " \\\\" for row in body]
    lines += ["\\bottomrule", "\\end{tabular}"]
    lines += [f"\\par\\footnotesize {latex_escape(note)}".replace(DIVERGED_MARK, "$^\\dagger$")
              for note in _notes(table)]
    return "\n".join(lines + ["\\end{table}"]) + "\n"
