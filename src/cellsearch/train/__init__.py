"""Training a population of settings on a task: the model (§3.5), its per-window steps, the
learning-rate schedules (§3.6), `evaluate` (settings -> Results) and the throughput benchmark.

Above `engine` (which runs cells) and `tasks` (which give data); below `executors`.
"""
