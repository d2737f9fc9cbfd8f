"""The evaluation report (`python -m eval.report`; the CLI and what a report holds: __main__).

  sources    the runs reported on (fine-tuning or cross-validation directories)
  scoring    every number of one evaluated set: rows, comparisons, fold-by-fold scores
  targets    the goals, met or not
  sections   the report as one list of blocks (headings, paragraphs, tables, images)
  rendering  the blocks as Markdown and as HTML, and how numbers are written
  plots      the report's figures (drawn by eval.figures)
  build      all of it: report.md, report.html, report.json and the PNGs
"""
