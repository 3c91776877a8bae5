"""The names under which Lookahead keeps its state in the inner optimizer's own structures.

Each tensor is named by what it holds (docs/design.md has the state table).
"""

SLOW_KEY = "lookahead_slow"
"""Per parameter: the slow weights (in eval mode only where the parameter cannot hold them exactly,
i.e. the slow copy has another dtype or device)."""
FAST_KEY = "lookahead_fast"
"""Per parameter, in eval mode only: the fast weights."""
K_KEY = "lookahead_k"
"""Per group: inner steps between two syncs."""
ALPHA_KEY = "lookahead_alpha"
"""Per group: the slow-weights step size."""
STEP_KEY = "lookahead_step"
"""Per group: inner steps since the group's last sync, in [0, k)."""
EVAL_KEY = "lookahead_eval_mode"
"""Per group: whether the parameters hold the slow weights."""
SYNCED_AT_KEY = "lookahead_synced_at"
"""Per group, in a saved state dict only: the inner step count of the group's first parameter with
slow weights at its last sync, or -1 (used to warn about a detour through a plain optimizer)."""
