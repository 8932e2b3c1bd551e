"""The benchmark (``imtel bench``): this pipeline against its peers and the machine's limit.

The folder reads like the run: ``workload`` (the fixed records and what ClickHouse must hold) ->
``broker`` (a dedicated bundled broker, topics, producing, commit probes) -> contenders, each its own
process: the pipeline's ``imtel worker``, ``naive_faust``, ``quix_app`` (own virtualenv), ``limit``;
``status`` (how a contender reports) -> ``runner`` (one measurement: window, CPU, peak RSS via
``procstat``; correctness via ``verify``) -> ``freshness`` (paced load) -> ``report`` (ratios, goals,
tables) -> ``harness`` (the whole run); ``options`` is the command line.
"""
