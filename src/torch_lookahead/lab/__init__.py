"""The lab: what Lookahead does, measured on data that ships with the installed packages.

Needs the ``lab`` extra (scikit-learn, matplotlib, typer, rich). ``torch-lookahead demo`` runs it.

* ``tasks``: digits (CNN), charlm (LSTM on the standard library's source), cifar10 (ResNet-18).
* ``optimizers``: the inner optimizers, the project's registry with the lab's defaults.
* ``runner``: one run, many runs, the cache.
* ``metrics``, ``claims``: summaries over seeds and the paper's claims checked against them.
* ``nqm``: the noisy quadratic model, closed forms against simulation.
* ``experiments``: the runs each command consists of; ``plots``, ``report``: the report folder.
"""
