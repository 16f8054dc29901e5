"""The `--user-dir` shim: `fairseq-train ... --user-dir user_dir` registers every OMoE component.

fairseq auto-imports only `tasks/` and `models/` of a user dir; `omoe_plugin.register()`
registers the optimizers and criterions too, and makes fairseq load checkpoints safely.
"""

import omoe_plugin

omoe_plugin.register()
