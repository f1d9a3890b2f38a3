"""Replay evaluation of recommendation policies on a logged click stream (``adrec-stream evaluate-replay``).

:mod:`.engine`: the test-then-train loop and the tie-aware rank metrics; :mod:`.policies`: the policies
(ADRec / SASRec+ static and incremental, popularity, recent popularity, Markov); :mod:`.report`: metrics.json,
report.md with paired bootstrap confidence intervals, PNG plots; :mod:`.cli`: the command.
"""
