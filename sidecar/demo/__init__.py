"""``mlwarden demo``: the whole self-healing story on one machine, with nothing to configure.

:mod:`.model` is the example model server (trained at start, wrapped by the middleware),
:mod:`.processes` starts and stops the child processes by PID, :mod:`.story` runs the phases
and judges them (``run_demo``), :mod:`.view` draws the live view and the summary table.
"""
