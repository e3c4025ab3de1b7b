"""Nightly verdicts: ``detbench check`` compares each cell of a run with its series.

:mod:`series` (what makes two cells the same series), :mod:`changepoint`
(Otava-style e-divisive means with a t-test), :mod:`stats` (Mann-Whitney U, bootstrap),
:mod:`detect` (night verdicts, pure), :mod:`verdict` (reads the store, builds findings),
:mod:`render` (text, Markdown, JSON, JUnit XML).  Importing this package imports nothing
heavy: numpy and scipy load when a check runs.
"""
