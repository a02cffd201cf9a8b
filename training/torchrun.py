"""``python -m training.torchrun ARGS`` is ``torchrun ARGS`` (the same elastic agent, run in this process) whose
workers never outlive it: each worker (``training.run``) arms itself to die with the agent, and the agent itself
dies with the process that started it when that is svdpipe (``svdpipe.processes``). torchrun ends its workers on
SIGTERM or SIGINT, but SIGKILL (``kill -9``, the OOM killer) of the agent alone would leave them training, each in
a session of its own; a node killed now stops its share of the job at once, and its peers at their next
collective."""

from __future__ import annotations

import os
import sys

from svdpipe.processes import child_env, die_with_parent


def main(argv: list[str] | None = None) -> None:
    die_with_parent()  # before torch is imported: the agent's workers are started after this
    os.environ.update(child_env())  # copied into every worker's environment: they die with this agent
    from torch.distributed.run import main as torchrun

    torchrun(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
