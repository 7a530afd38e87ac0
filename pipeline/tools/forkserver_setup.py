"""Imported first by the forkserver that runs the executor's stages (warm_stages.PRELOAD): from then on the kernel
SIGKILLs it the moment the Ray worker that started it dies, rather than when it next notices, and each of its stages
with it (they ask the same of the forkserver), as a fresh stage under `setpriv --pdeathsig KILL` dies with its
worker. A stage must never go on writing while its retry runs."""

from pipeline.tools.warm_stages import die_with_parent

die_with_parent()
