"""Discrete-event simulation of a plan under traffic: pools, continuous batching, links, tools, traces.

Bottom up: `engine` (event loop, timers, SimPy-style processes), `resources` (FIFO servers), `links`
(bandwidth shared by concurrent transfers), `costs` (service times from terrazzo.cost), `pools` (server
and LLM pools), `flow` (a request's walk through the agent graph), `sampling`, `arrivals` and `traces`
(randomness and traffic), `model` (a plan JSON and its specs), `run` (all of it wired and run),
`results` and `figures` (what a run reports), `cli` (the functions behind `terrazzo simulate`).
See docs/simulator.md.
"""
