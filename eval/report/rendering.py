"""The report's blocks written as Markdown and as HTML, and how its numbers are written.

A block is a tuple: ("h1" | "h2" | "h3", text), ("p", text), ("table", head, rows)
or ("img", path).
"""

from __future__ import annotations

import base64
import html
import pathlib

import numpy as np


def fmt(v, digits=3) -> str:
  if v is None or (isinstance(v, float) and not np.isfinite(v)):
    return "–"
  return f"{v:.{digits}f}"


def fmt_p(v) -> str:
  if v is None or not np.isfinite(v):
    return "–"
  return "<0.001" if v < 0.001 else f"{v:.3f}"


def fmt_ci(row: dict, metric: str) -> str:
  return (f"{fmt(row[metric])} [{fmt(row[f'{metric}_low'], 2)}, "
          f"{fmt(row[f'{metric}_high'], 2)}]")


def fmt_difference(e: dict) -> str:
  diff = f"{e['difference']:+.3f}" if np.isfinite(e["difference"]) else "–"
  return f"{diff} [{fmt(e['difference_low'], 2)}, {fmt(e['difference_high'], 2)}]"


def fmt_gain(value: float | None) -> str:
  return ("not computable (baseline Pearson <= 0 or undefined)" if value is None
          else f"{100 * value:+.1f} %")


def to_markdown(blocks, directory: pathlib.Path) -> str:
  out = []
  for block in blocks:
    kind = block[0]
    if kind in ("h1", "h2", "h3"):
      out.append("#" * int(kind[1]) + " " + block[1])
    elif kind == "p":
      out.append(block[1])
    elif kind == "table":
      head, rows = block[1], block[2]
      out.append("| " + " | ".join(head) + " |")
      out.append("|" + "|".join("---" for _ in head) + "|")
      out.extend("| " + " | ".join(r) + " |" for r in rows)
    elif kind == "img":
      rel = block[1].relative_to(directory)
      out.append(f"![{rel.stem}]({rel.as_posix()})")
    out.append("")
  return "\n".join(out)


def to_html(blocks, title: str) -> str:
  out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
         f"<title>{html.escape(title)}</title>",
         "<style>body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}"
         "table{border-collapse:collapse;font-size:12px;margin:0.5em 0}"
         "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
         "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style>",
         "</head><body>"]
  for block in blocks:
    kind = block[0]
    if kind in ("h1", "h2", "h3"):
      out.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
    elif kind == "p":
      out.append(f"<p>{html.escape(block[1])}</p>")
    elif kind == "table":
      out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
                 + "</tr>")
      out.extend("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                 for r in block[2])
      out.append("</table>")
    elif kind == "img":
      data = base64.b64encode(block[1].read_bytes()).decode("ascii")
      out.append(f"<p><img alt='{html.escape(block[1].stem)}' "
                 f"src='data:image/png;base64,{data}'></p>")
  out.append("</body></html>")
  return "\n".join(out)
