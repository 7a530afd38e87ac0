"""The set-up of the forkserver that runs the executor's stages (warm_stages.PRELOAD, its only entry). Before any
other import the kernel is asked to SIGKILL it the moment the Ray worker that started it dies, rather than when it
next notices, and each of its stages with it (they ask the same of the forkserver), as a fresh stage under `setpriv
--pdeathsig KILL` dies with its worker: a stage must never go on writing while its retry runs. Then the heavy
libraries, each failure said on the Ray worker's output rather than skipped in silence, as multiprocessing's own
preload does. Then MLflow's map of the installed distributions, which MLflow needs for every model it logs."""

import os

from pipeline.lib.lifetime import die_with_parent

die_with_parent(os.getppid())

from pipeline.tools import warm_stages  # noqa: E402 (its imports come after the death signal)

warm_stages.forkserver_pid = os.getpid()  # the parent each stage checks it still has as it sets its death signal
warm_stages.preload(warm_stages.HEAVY_LIBRARIES)
warm_stages.warm_mlflow_requirements()
