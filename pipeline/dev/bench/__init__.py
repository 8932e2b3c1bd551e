"""The benchmark (``imtel bench``): this pipeline against its peers and the machine's limit.

The folder reads like the run: ``workload`` (the fixed records and what ClickHouse must hold) ->
``broker`` (topics, producing, commit probes on a dedicated broker) -> ``contenders`` (the registry:
one entry per contender) and ``measures`` (how each is measured), each its own process: the
pipeline's ``imtel worker``, ``naive_faust``, ``quix_app`` (own virtualenv), ``limit``; ``status`` (how
a contender reports) -> ``runner`` (one measurement: window, CPU, peak RSS via ``procstat``;
correctness via ``verify``) -> ``repeats`` (three runs or one 15 s window, medians with min-max) ->
``freshness`` (paced load) -> ``report`` (ratios, goals, tables) -> ``harness`` (the whole run);
``options`` is the command line.
"""
