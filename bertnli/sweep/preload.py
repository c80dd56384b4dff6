"""What a trial process imports, imported once by the forkserver that forks the trials (launcher.py).

A trial imports about 2,700 modules, most of them lazily: torch's compiler stack (the optimizers
load it on their first step), MLflow's client and SQL store, pandas and matplotlib for its
figures. Imported here, every forked trial starts with them instead of spending seconds of CPU
on each (benchmarks/trial_start.py).
"""

import threading

import matplotlib.pyplot  # noqa: F401
import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
import mlflow.tracking  # noqa: F401
import pandas  # noqa: F401
import safetensors.torch  # noqa: F401
import torch._dynamo  # noqa: F401
import tqdm

import bertnli.sweep.trial  # noqa: F401

# tqdm's default lock is a named semaphore for bars shared across processes. Made in each trial,
# it would outlive the trial (trials end with os._exit) and the sweep would warn of it as leaked.
tqdm.tqdm.set_lock(threading.RLock())
