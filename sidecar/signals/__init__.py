"""Signal sources: the figures the healing loop and the canary analysis decide on.

:mod:`.source` defines the interface and the board that reads several sources as one;
:mod:`.windows` (the sidecar's own attempts), :mod:`.health` (health checks and the
middleware's reports), :mod:`.loop` (breakers, shadow, canary) and :mod:`.prometheus` (PromQL
over the fleet) are the sources; :mod:`.outcomes` names what an attempt came to. This package
imports no submodule itself, so that low-level modules may import :mod:`.outcomes` alone.
"""
