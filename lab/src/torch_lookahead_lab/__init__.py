"""torch-lookahead-lab: what Lookahead does, measured on data that ships with the installed
packages. A package of its own beside the library (``torch_lookahead``), whose public names
alone it uses; ``torch-lookahead demo`` runs it.

* ``tasks``: digits (CNN), charlm (LSTM on the standard library's source), cifar10 (ResNet-18).
* ``optimizers``: the inner optimizers, the library's registry with the lab's defaults.
* ``runner``: one run, many runs, the cache; ``provenance``: what produced a result.
* ``metrics``, ``stats``, ``claims``: summaries over seeds and the paper's claims checked
  against them; ``reproduce``: what "reproduced" means for a committed report.
* ``nqm``: the noisy quadratic model, closed forms against simulation.
* ``experiments``, ``stability``: the runs each command consists of and what they measured;
  ``plots``, ``report``: the report folder; ``cli``: the ``torch-lookahead`` command.
"""

__version__ = "0.1.0"
