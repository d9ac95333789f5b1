"""`idunno demo` / `make demo`: the whole system on one machine in under three minutes.

A fresh 6-node local cluster (in the cluster directory, like `idunno up`) gets the zoo models
(resnet18 and alexnet, untrained; digits_logreg, trained), a set of sample photos and the digits,
and every worker is trained. A ResNet18 job starts, then an AlexNet job, and a live view shows
each job's progress, query rate and workers, the members' roles and the failure events the
nodes log. Midway the demo SIGKILLs a worker, later the coordinator. It ends with the course's
measurements taken from this run (1a, 1b, 2, 3), a digits job's accuracy and the demo's
duration, and stops the cluster (`--keep` leaves it up to explore).

Modules: `cluster` (start, models, datasets, training), `jobs` (the live phase and the kills),
`events` (the events panel), `view` (rendering), `figures` (the measurements, pure) and
`report` (the closing text, pure); `run` ties them together.
"""

from idunno.demo.run import run_demo

__all__ = ["run_demo"]
