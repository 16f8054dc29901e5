"""The `--user-dir` shim: `fairseq-train ... --user-dir user_dir` registers every OMoE component.

fairseq auto-imports only `tasks/` and `models/` of a user dir; importing the package
registers the optimizers and criterions too.
"""

import omoe_plugin  # noqa: F401
