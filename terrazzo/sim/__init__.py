"""Discrete-event simulation of a plan under traffic: pools, continuous batching, links, tools, traces.

Bottom up: `engine` (event loop, timers, SimPy-style processes), `resources` (FIFO servers), `links`
(bandwidth shared by concurrent transfers), `service_times` (service times from terrazzo.cost), `pools`
(server and LLM pools), `flow` (a request's walk through the agent graph), `sampling`, `arrivals` and
`traces` (randomness and traffic), `sim_inputs` (a plan JSON and its specs), `simulation` (all of it wired
and run), `results` and `sim_figures` (what a run reports), `simulate_command` (the functions behind
`terrazzo simulate`).
See docs/simulator.md.
"""
